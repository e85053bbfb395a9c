"""The output-memory guard: the estimate, the message, and that the run stops before training."""

import json
import os

import pytest

from recbole_elastic.config import build_config
from recbole_elastic.data import prepare_data
from recbole_elastic.errors import ConfigError
from recbole_elastic.memory_guard import (
    _cgroup_headroom,
    batch_targets,
    check_output_memory,
    output_candidates,
    output_layer_bytes,
)
from recbole_elastic.quick_start import run

from tests.helpers import run_python_reporting, tiny_run_config

GIB = 2**30


def settings(**overrides):
    return build_config("ELASTIC", "ml-100k", config_dict={"gpu_id": "", **overrides})


def test_estimate_counts_the_tensors_at_the_peak_of_each_loss_with_a_margin():
    # CE: three float [targets, items] tensors
    assert output_layer_bytes(settings(train_batch_size=2048), 155_750) == int(2048 * 155_750 * 4 * 3 * 1.05)
    # the sampled softmax: three float [targets, 1 + negatives], the bool mask [targets, negatives] and the
    # negatives' embeddings [negatives, hidden_size]
    sampled = settings(train_batch_size=2048, loss_type="SampledSoftmax", sampled_negatives=512, hidden_size=32)
    negatives = 512 + 2048
    expected = 2048 * (1 + negatives) * 4 * 3 + 2048 * negatives + negatives * 32 * 4
    assert output_layer_bytes(sampled, 155_750) == int(expected * 1.05)
    uniform_only = settings(loss_type="SampledSoftmax", sampled_negatives=100, in_batch_negatives=False)
    assert output_layer_bytes(uniform_only, 155_750) == int((2048 * 101 * 12 + 2048 * 100 + 100 * 64 * 4) * 1.05)


def test_all_position_batches_count_their_largest_batch():
    # Packed windows: the average batch (2048 targets here) plus one window of N = 200; slots: 10 windows of 200.
    packed = build_config("CausalSASRec", "ml-100k", config_dict={"gpu_id": "", "MAX_ITEM_LIST_LENGTH": 200})
    assert packed["train_all_positions"] is True and packed["train_batch_counts"] == "targets"
    assert output_layer_bytes(packed, 1000) == int((2048 + 200) * 1000 * 4 * 3 * 1.05)
    slots = build_config(
        "CausalSASRec",
        "ml-100k",
        config_dict={"gpu_id": "", "MAX_ITEM_LIST_LENGTH": 200, "train_batch_counts": "slots"},
    )
    assert output_layer_bytes(slots, 1000) == int(2000 * 1000 * 4 * 3 * 1.05)
    # a window longer than half the batch: a packed batch may average two windows
    long_windows = build_config("CausalSASRec", "ml-100k", config_dict={"gpu_id": "", "MAX_ITEM_LIST_LENGTH": 1500})
    assert output_layer_bytes(long_windows, 1000) == int((3000 + 1500) * 1000 * 4 * 3 * 1.05)


def test_packed_batches_stay_within_the_counted_targets(tiny_data):
    # Every batch of a tiny epoch, packed at budgets below, at and above the window length.
    for batch_size in (4, 10, 64):
        config = build_config(
            "CausalSASRec", "tiny", config_dict=tiny_run_config(tiny_data, train_batch_size=batch_size)
        )
        _, train_data, _, _ = prepare_data(config)
        largest = max(int((batch["target_item_id_list"] != 0).sum()) for batch in train_data)
        assert largest <= batch_targets(config)


OUTPUT_STEP_SCRIPT = """
import json, re, sys, torch
from recbole_elastic.standalone import build_standalone_model
torch.set_num_threads(1)


def status_bytes(field):
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1)) * 1024


settings = json.loads(sys.argv[1])
n_targets, n_items = settings.pop("train_batch_size"), settings.pop("n_items")
model = build_standalone_model("ELASTIC", n_items, 10, **settings)
query = torch.randn(n_targets, model.hidden_size, requires_grad=True)
targets = torch.randint(1, n_items, (n_targets,))
model.output_loss(query[:2], targets[:2]).backward()  # warm up torch's allocations
model.zero_grad(set_to_none=True)
with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
    f.write("5")  # the peak RSS (VmHWM) restarts from the current RSS
before = status_bytes("VmRSS")
model.output_loss(query, targets).backward()
print("REPORT " + json.dumps(status_bytes("VmHWM") - before))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resettable peak RSS")
@pytest.mark.parametrize(
    "loss",
    [
        {"loss_type": "CE", "train_batch_size": 512, "n_items": 100_000},
        {"loss_type": "SampledSoftmax", "train_batch_size": 1024, "n_items": 100_000, "sampled_negatives": 20_000},
    ],
)
def test_estimate_bounds_the_memory_an_output_layer_step_takes(loss):
    """The estimate is an upper bound of the peak memory one training step of the output layer adds (measured in
    a fresh process, at sizes where the logits dominate), and that peak holds more than two logit copies.
    The sampled softmax adds 3.33 copies (its mask included), CE 3.00: 3 copies without the mask would not bound
    the sampled softmax."""
    added = run_python_reporting(OUTPUT_STEP_SCRIPT, json.dumps({**loss, "hidden_size": 64}))
    config = settings(**{key: value for key, value in loss.items() if key != "n_items"}, hidden_size=64)
    logits = loss["train_batch_size"] * output_candidates(config, loss["n_items"]) * 4
    assert 2 * logits < added <= output_layer_bytes(config, loss["n_items"])


def test_guard_names_the_sampled_loss_and_a_batch_that_fits():
    config = settings(train_batch_size=2048)
    with pytest.raises(ConfigError) as error:
        check_output_memory(config, 155_750, available=2 * GIB)
    message = str(error.value)
    assert "loss_type=CE over 155,750 items at train_batch_size=2048 needs about 3.7 GiB" in message
    assert "only 2.0 GiB is free" in message
    assert "loss_type=SampledSoftmax (each target scored against 2,561 items" in message
    assert "train_batch_size to 1024 or less" in message  # 1024 * 155,750 * 12 * 1.05 bytes = 1.9 GiB fits in 2
    check_output_memory(config, 155_750, available=4 * GIB)  # fits: nothing raised
    check_output_memory(settings(output_memory_guard=False), 155_750, available=GIB)  # switched off
    check_output_memory(settings(loss_type="BPR"), 155_750, available=GIB)  # BPR scores two items


def test_guard_on_the_sampled_loss_and_on_recbole_models():
    sampled = settings(loss_type="SampledSoftmax", sampled_negatives=100_000)
    with pytest.raises(ConfigError, match="Lower sampled_negatives, or lower train_batch_size to 512 or less"):
        check_output_memory(sampled, 155_750, available=GIB)
    sasrec = build_config("SASRec", "ml-100k", config_dict={"gpu_id": ""})
    with pytest.raises(ConfigError, match=r"GiB is free on cpu\. Lower train_batch_size to 128 or less"):
        check_output_memory(sasrec, 155_750, available=GIB // 4)


def test_cgroup_headroom(tmp_path):
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("400\n")
    assert _cgroup_headroom(str(tmp_path)) == 600
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_headroom(str(tmp_path)) is None
    assert _cgroup_headroom(str(tmp_path / "absent")) is None


def test_run_stops_before_the_first_batch(tiny_data, monkeypatch):
    monkeypatch.setattr("recbole_elastic.memory_guard.available_bytes", lambda device: 1000)
    with pytest.raises(ConfigError, match="output layer's logits alone"):
        run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    result = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, output_memory_guard=False))
    assert result["epochs"] == 1
