"""Every plugin model through RecBole's own data pipeline, trainer, evaluator and checkpoints, on a tiny dataset."""

import pytest

from recbole_elastic.config import build_config
from recbole_elastic.evaluate import load_for_testing
from recbole_elastic.quick_start import run
from recbole_elastic.utils import plugin_models

from tests.helpers import assert_metrics_match_the_checkpoint, run_python_reporting, tiny_run_config


@pytest.mark.parametrize("model", sorted(plugin_models()))
@pytest.mark.parametrize("loss_type", ["CE", "BPR", "SampledSoftmax"])
def test_one_epoch_train_and_evaluate(tiny_data, model, loss_type):
    config_dict = tiny_run_config(tiny_data, loss_type=loss_type)
    negatives = build_config(model, "tiny", config_dict=config_dict)["train_neg_sample_args"]["distribution"]
    assert negatives == ("uniform" if loss_type == "BPR" else "none")  # CE scores every item, SampledSoftmax draws
    result = run(model, "tiny", config_dict=config_dict)
    assert result["model"] == model
    assert result["epochs"] == 1 and len(result["epoch_seconds"]) == 1
    assert result["valid_curve"] == [pytest.approx(result["best_valid_score"])]
    assert set(result["test_result"]) == {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"}
    assert_metrics_match_the_checkpoint(result["test_result"], result["model_file"])
    assert result["valid_metric"] == "MRR@10"  # RecBole's default
    assert result["best_valid_score"] == result["best_valid_result"]["mrr@10"]
    usage = result["memory_usage"]  # slots retrieved over the test users
    if model not in ("ELASTIC", "CausalELASTIC", "ChunkedELASTIC"):  # the models with an interest memory
        assert usage is None
        return
    _, saved_model, _, test_data = load_for_testing(result["model_file"])
    assert usage == saved_model.memory_slot_usage(test_data)  # the trained model's, over the test users
    assert usage["total_slots"] == 8 * 8


RELOAD_SCRIPT = """
import json, sys, torch
from recbole_elastic.quick_start import load_data_and_model
from recbole.utils import get_trainer
config, model, dataset, train_data, valid_data, test_data = load_data_and_model(sys.argv[1])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
print("REPORT " + json.dumps({k: float(v) for k, v in result.items()}))
"""


def test_checkpoint_reloads_in_a_new_process_with_the_same_scores(tiny_data):
    result = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    reloaded = run_python_reporting(RELOAD_SCRIPT, result["model_file"])
    assert reloaded == pytest.approx({k: float(v) for k, v in result["test_result"].items()}, abs=1e-6)
