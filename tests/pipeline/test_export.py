"""ONNX export: onnxruntime's user vectors equal PyTorch's; the item matrix and id maps score as the model does."""

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

from recbole_elastic.cli import main  # noqa: E402
from recbole_elastic.export import ONNX_OPSET, cummax_by_masked_max, export_onnx  # noqa: E402
from recbole_elastic.model import ELASTIC, CausalELASTIC, CausalLinRec, CausalSASRec  # noqa: E402
from recbole_elastic.quick_start import load_data_and_model, run  # noqa: E402

from tests.helpers import build_model, randomise_biases_and_gains, run_cli_expecting_error, tiny_run_config  # noqa: E402

N_ITEMS, MAX_LEN = 40, 12
SMALL = {"hidden_size": 16, "inner_size": 32, "n_heads": 2}
MEMORY = {"n_interests": 4, "memory_keys": 8, "memory_topk": 2, "memory_key_dim": 8}
# 5-position chunks: N = 12 ends in a partial chunk. inference_chunk_positions 24: PyTorch's eval forward encodes
# two users at a time, the exported graph the whole batch at once.
CAUSAL = {**MEMORY, "causal_chunk_size": 5, "inference_chunk_positions": 24}


def sasrec_class():
    from recbole.model.sequential_recommender import SASRec

    return SASRec


MODELS = {
    "ELASTIC": (lambda: ELASTIC, MEMORY),
    "CausalELASTIC": (lambda: CausalELASTIC, CAUSAL),
    "CausalELASTIC-recency": (lambda: CausalELASTIC, {**CAUSAL, "causal_recency_bias": True}),
    "CausalELASTIC-running-norm": (lambda: CausalELASTIC, {**CAUSAL, "memory_query_norm": "running"}),
    "CausalSASRec": (lambda: CausalSASRec, {}),
    "CausalSASRec-cosine": (lambda: CausalSASRec, {"score_temperature": 0.05}),
    "CausalSASRec-pre-LN": (lambda: CausalSASRec, {"norm_first": True}),
    "CausalLinRec": (lambda: CausalLinRec, {"causal_chunk_size": 5}),
    "SASRec": (sasrec_class, {}),
}


def histories(lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    item_seq = torch.randint(1, N_ITEMS, (len(lengths), MAX_LEN), generator=generator)
    item_seq_len = torch.tensor(lengths)
    item_seq[torch.arange(MAX_LEN).unsqueeze(0) >= item_seq_len.unsqueeze(1)] = 0
    return item_seq, item_seq_len


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_user_vectors_equal_pytorchs_at_every_batch_size_and_history_length(name, tmp_path):
    model_class, overrides = MODELS[name]
    torch.manual_seed(0)
    model = randomise_biases_and_gains(build_model(model_class(), N_ITEMS, MAX_LEN, **SMALL, **overrides))
    if "recency" in name:
        with torch.no_grad():
            for block in model.dispatcher_blocks:
                block.aggregate.recency_slopes.uniform_(-0.5, 1.5)
    tokens = ["[PAD]"] + [f"item-{i}" for i in range(1, N_ITEMS)]
    manifest = export_onnx(model, tokens, str(tmp_path))

    session = onnxruntime.InferenceSession(str(tmp_path / "user_tower.onnx"), providers=["CPUExecutionProvider"])
    items = np.load(tmp_path / "item_embeddings.npy")
    # One user (each length), then batches mixing the shortest, a middle and the full history.
    batches = [[1], [6], [MAX_LEN], [1, 6, MAX_LEN, 3], [MAX_LEN, 1, 6, 2, 9, MAX_LEN, 1, 11, 6]]
    for seed, lengths in enumerate(batches):
        item_seq, item_seq_len = histories(lengths, seed)
        with torch.no_grad():
            expected = model(item_seq, item_seq_len)
            if "cosine" in name:  # user vectors: the outputs' directions over the temperature
                expected = expected / expected.norm(dim=-1, keepdim=True) / overrides["score_temperature"]
            expected = expected.numpy()
            expected_scores = model.full_sort_predict({"item_id_list": item_seq, "item_length": item_seq_len}).numpy()
        got = session.run(["user_vector"], {"item_seq": item_seq.numpy(), "item_seq_len": item_seq_len.numpy()})[0]
        assert got.shape == (len(lengths), 16)
        assert np.abs(got - expected).max() <= 1e-5, (lengths, np.abs(got - expected).max())
        assert np.abs(got @ items.T - expected_scores).max() <= 1e-5
    assert manifest["onnx_vs_pytorch_max_abs_diff"] <= 1e-5
    written = json.loads((tmp_path / "export.json").read_text())
    assert written == manifest
    assert (written["opset"], written["max_seq_length"], written["hidden_size"]) == (ONNX_OPSET, MAX_LEN, 16)
    assert written["item_tokens"] == tokens and written["padding_id"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "item_embeddings.npy", "user_tower.onnx"]
    # What made onnxruntime 20x slower than PyTorch: a loop over the memory's bags, element-wise masks.
    operators = [node.op_type for node in onnx.load(str(tmp_path / "user_tower.onnx")).graph.node]
    assert "Loop" not in operators and operators.count("NonZero") <= 1


def test_the_exported_cummax_gives_torch_cummax_values_and_indices_with_ties():
    values = torch.tensor([[3.0, 1.0, 3.0, 5.0, 5.0, -2.0, 7.0], [-1.0, -1.0, -3.0, 0.0, -4.0, 0.0, 0.0]])
    values = torch.cat([values, torch.randn(3, 7, generator=torch.Generator().manual_seed(0))])
    for dim in (0, 1):
        expected = torch.cummax(values, dim)
        got = cummax_by_masked_max(values, dim)
        assert torch.equal(got[0], expected.values) and torch.equal(got[1], expected.indices), dim


def test_export_from_the_command_line_maps_the_datasets_item_tokens(tiny_data, capsys, tmp_path):
    result = run("CausalELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1, causal_chunk_size=4))
    output = tmp_path / "exported"
    assert main(["--export=onnx", f"--checkpoint={result['model_file']}", f"--output={output}"]) == 0
    assert f"CausalELASTIC on tiny: user tower (ONNX opset {ONNX_OPSET}, N = 10, H = 16)" in capsys.readouterr().out
    manifest = json.loads((output / "export.json").read_text())
    config, model, dataset, _, _, test_data = load_data_and_model(result["model_file"])
    item_tokens = dataset.field2id_token["item_id"]
    assert manifest["item_tokens"] == list(item_tokens) and manifest["item_tokens"][0] == "[PAD]"
    # The written items are the ones in the data file (the generated dataset's items are 1..60, as text).
    with open(f"{tiny_data}/tiny/tiny.inter") as f:
        file_items = {line.split("\t")[1] for line in f.read().splitlines()[1:]}
    assert set(manifest["item_tokens"][1:]) == file_items
    # A test user's history, written as external tokens, mapped back through the JSON: the same user vector.
    batch = next(iter(test_data))[0]
    token_to_id = {token: index for index, token in enumerate(manifest["item_tokens"])}
    rows = zip(batch["item_id_list"].tolist(), batch["item_length"].tolist())
    tokens = [[item_tokens[i] for i in row[:length]] for row, length in rows]
    item_seq = np.zeros((len(tokens), manifest["max_seq_length"]), dtype=np.int64)
    for row, history in enumerate(tokens):
        item_seq[row, : len(history)] = [token_to_id[token] for token in history]
    session = onnxruntime.InferenceSession(str(output / "user_tower.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"item_seq": item_seq, "item_seq_len": batch["item_length"].numpy()})[0]
    model.eval()
    with torch.no_grad():
        expected = model(batch["item_id_list"], batch["item_length"]).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    assert np.array_equal(np.load(output / "item_embeddings.npy"), model.item_embedding.weight.detach().numpy())


def test_export_without_a_checkpoint_says_what_to_pass(capsys):
    err = run_cli_expecting_error(capsys, ["--export=onnx"])
    assert "--export=onnx needs --checkpoint=PATH" in err
