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


# RecBole's own sequential model tests (tests/model/test_model_auto.py, v1.2.1) run each model through
# objective_function with these settings on top of a small dataset; here the plugin models, after register().
RECBOLE_PATTERN_SCRIPT = r"""
import json, sys
import recbole_elastic

recbole_elastic.register()
from recbole.config import Config
from recbole.quick_start import objective_function

base = json.loads(sys.argv[1])
variants = {
    "CE": {},
    "BPR": {"loss_type": "BPR"},
    "BPR explicit negatives": {"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform"}},
    "SampledSoftmax": {"loss_type": "SampledSoftmax", "sampled_negatives": 16},
    "TO LS uni100": {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100"}},
    "pop100": {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "pop100"}},
    "short sequences": {"MAX_ITEM_LIST_LENGTH": 2},
}
report = {}
for model in ("ELASTIC", "LinRec"):
    for name, variant in variants.items():
        config_dict = {**base, "model": model, "dataset": "tiny", **variant}
        negatives = Config(config_dict=config_dict)["train_neg_sample_args"]
        result = objective_function(config_dict=config_dict, saved=False)
        input_type = Config(config_dict=config_dict)["MODEL_INPUT_TYPE"].name
        report[f"{model} {name}"] = {
            "negatives": negatives["distribution"], "input": input_type, "metrics": sorted(result["test_result"])
        }
print("REPORT " + json.dumps(report))
"""


def test_recbole_model_test_pattern_runs_the_plugin_models_after_register(tiny_data):
    config = tiny_run_config(tiny_data)
    config.pop("checkpoint_dir")
    report = run_python_reporting(RECBOLE_PATTERN_SCRIPT, json.dumps(config))
    assert len(report) == 14
    metrics = ["hit@10", "mrr@10", "ndcg@10", "precision@10", "recall@10"]
    for name, outcome in report.items():
        assert outcome["metrics"] == metrics, name
        # RecBole's BPR tests set no negatives: BPR gets one uniform negative, CE none, as on the plugin's CLI
        assert outcome["negatives"] == ("uniform" if "BPR" in name else "none"), name
        assert outcome["input"] == ("PAIRWISE" if "BPR" in name else "POINTWISE"), name


BUILTIN_SCRIPT = r"""
import json
from recbole_elastic import compat, register

compat.apply()  # RecBole's Config needs numpy's old names; register() would apply it anyway
from recbole.config import Config

def settings(model, dataset):
    config = Config(model=model, dataset=dataset, config_dict={"train_neg_sample_args": None})
    return {key: repr(value) for key, value in config.final_config_dict.items()}

cases = [("SASRec", "ml-1m"), ("SASRec", "amazon-books"), ("GRU4Rec", "ml-100k"), ("BPR", "ml-100k")]
before = [settings(*case) for case in cases]
register()
after = [settings(*case) for case in cases]
print("REPORT " + json.dumps({"same": [b == a for b, a in zip(before, after)],
                              "sasrec_ml1m_len": after[0]["MAX_ITEM_LIST_LENGTH"]}))
"""


def test_register_leaves_builtin_models_settings_exactly_as_recbole_makes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_python_reporting(BUILTIN_SCRIPT)
    assert report == {"same": [True] * 4, "sasrec_ml1m_len": "50"}  # not the plugin's ml-1m.yaml (200)


HYPERTUNING_SCRIPT = r"""
import json, sys
import recbole_elastic

recbole_elastic.register()
from recbole.quick_start import objective_function
from recbole.trainer import HyperTuning

params_file, fixed_file = sys.argv[1], sys.argv[2]
tuning = HyperTuning(objective_function, algo="exhaustive", params_file=params_file,
                     fixed_config_file_list=[fixed_file], max_evals=10)
tuning.run()
print("REPORT " + json.dumps({"trials": sorted(tuning.params2result), "best": tuning.best_params}))
"""


def test_recbole_exhaustive_hypertuning_over_elastic_with_todays_hyperopt(tiny_data, tmp_path):
    import yaml

    fixed = {**tiny_run_config(tiny_data), "model": "ELASTIC", "dataset": "tiny"}
    fixed.pop("checkpoint_dir")
    fixed_file, params_file = tmp_path / "fixed.yaml", tmp_path / "params.hyper"
    fixed_file.write_text(yaml.safe_dump(fixed))
    params_file.write_text("n_interests choice [2, 4]\n")
    report = run_python_reporting(HYPERTUNING_SCRIPT, str(params_file), str(fixed_file))
    assert report["trials"] == ["n_interests:2", "n_interests:4"]  # the whole grid, each once
    assert report["best"]["n_interests"] in (2, 4)


NO_RAY_SCRIPT = r"""
import importlib.abc, json, sys


class HideRay(importlib.abc.MetaPathFinder):  # as on Python 3.12+, where the plugin installs RecBole without ray
    def find_spec(self, name, path, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)


sys.meta_path.insert(0, HideRay())
import recbole_elastic

recbole_elastic.register()
from recbole.quick_start import objective_function, run_recbole
import ray.tune

ray.tune.report(ndcg=1.0)  # what objective_function calls: nothing to report to without a Tune session
try:
    ray.tune.run
except ImportError as error:
    message = str(error)
print("REPORT " + json.dumps({"quick_start": callable(run_recbole), "message": message}))
"""


def test_recbole_quick_start_imports_without_ray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_python_reporting(NO_RAY_SCRIPT)
    assert report["quick_start"]
    assert "ray is not installed" in report["message"] and "ray.tune.run" in report["message"]
