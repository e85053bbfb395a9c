"""recbole_elastic.register() makes RecBole's own entry points (run_recbole, get_model, Config,
load_data_and_model, objective_function) find the plugin's models by name, in a fresh process."""

import json

from tests.helpers import assert_metrics_match_the_checkpoint, run_python_reporting, tiny_run_config

SCRIPT = r"""
import glob, json, sys
import recbole_elastic

recbole_elastic.register()
recbole_elastic.register()  # idempotent

from recbole.config import Config
from recbole.quick_start import load_data_and_model, objective_function, run_recbole
from recbole.utils import get_model, get_trainer

config_dict = json.loads(sys.argv[1])
report = {
    "get_model": get_model("LinRec").__name__,
    "builtin_module": get_model("SASRec").__module__,
}
config = Config(model="ELASTIC", dataset="tiny", config_dict=config_dict)
report["yaml_default"] = [config["memory_query_batchnorm"], config["use_interest_memory"], config["n_layers"]]
report["neg_sampling"] = config["train_neg_sample_args"]["distribution"]
override = Config(model="ELASTIC", dataset="tiny", config_dict={**config_dict, "n_interests": 3})
report["override"] = override["n_interests"]
report["sasrec_has_no_elastic_keys"] = "memory_query_batchnorm" not in Config(
    model="SASRec", dataset="tiny", config_dict={**config_dict, "train_neg_sample_args": None}
).final_config_dict

result = run_recbole(model="ELASTIC", dataset="tiny", config_dict=config_dict)
report["test_result"] = {k: float(v) for k, v in result["test_result"].items()}
checkpoint = glob.glob(config_dict["checkpoint_dir"] + "/ELASTIC-*.pth")[0]
report["checkpoint"] = checkpoint
config, model, dataset, train_data, valid_data, test_data = load_data_and_model(checkpoint)
report["loaded_model"] = type(model).__name__
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
reloaded = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
report["reloaded_result"] = {k: float(v) for k, v in reloaded.items()}
# what HyperTuning calls for each trial
tuned = objective_function(config_dict={**config_dict, "model": "LinRec", "dataset": "tiny"}, saved=False)
report["objective_model"] = tuned["model"]
report["objective_score"] = float(tuned["best_valid_score"])
report["objective_valid_result"] = {k: float(v) for k, v in tuned["best_valid_result"].items()}
print("REPORT " + json.dumps(report))
"""


def test_register_then_recbole_quick_start_by_name_and_reload(tiny_data):
    report = run_python_reporting(SCRIPT, json.dumps(tiny_run_config(tiny_data)))
    assert report["get_model"] == "LinRec"
    assert report["builtin_module"] == "recbole.model.sequential_recommender.sasrec"
    assert report["yaml_default"] == [True, True, 2]  # ELASTIC.yaml reached RecBole's own Config
    assert report["neg_sampling"] == "none"
    assert report["override"] == 3  # the user's config still wins over the plugin's YAML
    assert report["sasrec_has_no_elastic_keys"]
    assert report["loaded_model"] == "ELASTIC"
    assert report["reloaded_result"] == report["test_result"]
    assert_metrics_match_the_checkpoint(report["test_result"], report["checkpoint"])
    assert report["objective_model"] == "LinRec"
    assert report["objective_score"] == report["objective_valid_result"]["mrr@10"]  # RecBole's default valid_metric
