"""The README's commands still run as written.

Every ```bash block after an HTML comment ``<!-- ml-100k: ... -->`` or ``<!-- own dataset: ... -->`` is read from
README.md, and each ``python run_recbole_elastic.py ...`` in it runs through the CLI's ``main`` with tiny settings
appended (later options win), so a renamed option, key or model fails here, not in a reader's first try.
"""

import os
import re
import shlex
from typing import List

import pytest

from recbole_elastic.cli import DEFAULT_MODEL, main, parse_args
from recbole_elastic.compat import load_checkpoint
from recbole_elastic.config import build_config, check_config_keys, plugin_yaml

from tests.helpers import REPO_ROOT

with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as readme_file:
    README = readme_file.read()

# Small models, one epoch.
TINY = ["--epochs=1", "--hidden_size=16", "--inner_size=32", "--n_interests=4", "--memory_keys=8"]
TINY += ["--memory_topk=2", "--memory_key_dim=8", "--gpu_id="]
# ml-100k cut to its users with 300 or more ratings (54 of 943) and 10-item windows: seconds per run.
ML100K_SMALL = ["--user_inter_num_interval=[300,inf)", "--MAX_ITEM_LIST_LENGTH=10"]


def marked_commands(marker: str) -> List[List[str]]:
    """The arguments of each ``python run_recbole_elastic.py`` command in the README's blocks marked ``marker``."""
    blocks = re.findall(rf"<!-- {re.escape(marker)}:[^\n]*-->\n```bash\n(.*?)```", README, re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        for part in line.split("&&"):  # the set-up command ends with the default run
            words = shlex.split(part)
            if words[:2] == ["python", "run_recbole_elastic.py"]:
                commands.append(words[2:])
    return commands


def first_seed_only(args: List[str]) -> List[str]:
    """A sweep's first seed: the sweep over several seeds is tested in tests/pipeline/test_sweep.py."""
    return [arg.split(",")[0] if arg.startswith("--seeds=") else arg for arg in args]


def distinct_runs(commands: List[List[str]]) -> List[List[str]]:
    """The commands that still differ once the tiny settings are appended (``--epochs=300`` becomes 1)."""
    runs, seen = [], []
    for command in commands:
        args = first_seed_only(command) + TINY + ML100K_SMALL
        parsed = parse_args(args)
        if parsed not in seen:
            seen.append(parsed)
            runs.append(args)
    return runs


ML100K_RUNS = distinct_runs(marked_commands("ml-100k"))


def test_the_readme_marks_its_ml100k_commands():
    # the set-up command's default run, training with the protocol, the sweep, the long-history sweep
    assert len(marked_commands("ml-100k")) >= 4 and len(ML100K_RUNS) >= 4
    assert ["python", "-m", "pytest", "-q", "tests"] == shlex.split(README.split("&& ")[-1].split("\n")[0]), (
        "the README's test command is the one .ci/run runs"
    )


@pytest.mark.parametrize("args", ML100K_RUNS, ids=lambda args: " ".join(args[: -len(TINY + ML100K_SMALL)]) or "default")
def test_a_readme_command_runs_on_ml100k(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # logs, checkpoints and sweep results
    assert main(args) == 0
    out = capsys.readouterr().out
    options, _ = parse_args(args)
    models = (options.model or DEFAULT_MODEL).split(",")
    if len(models) > 1:  # a sweep: a header per run, then one table row per model
        assert f"[1/{len(models)}] {models[0]} seed " in out
        assert all(f"| {model} |" in out for model in models) and "failed" not in out
    else:
        assert f"{models[0]} on ml-100k (1 epochs" in out
        metric = "NDCG@10" if options.protocol == "loo" else "MRR@10"
        assert f"best valid ({metric} = " in out


def test_the_own_dataset_recipes_run_on_a_long_history_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    header = README.split("Write RecBole atomic files", 1)[1].split("```\n", 2)[1].splitlines()[0]
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    folder = tmp_path / "datasets" / "mine"
    folder.mkdir(parents=True)
    rows = [header]  # 30 users with 150 to 237 items each: histories longer than RecBole's default N of 50
    for user in range(1, 31):
        rows += [f"{user}\t{(user * 7 + step * 13) % 400 + 1}\t{978300000 + step}" for step in range(150 + user * 3)]
    (folder / "mine.inter").write_text("\n".join(rows) + "\n", encoding="utf-8")

    plain, long_history = [
        [arg.replace("<name>", "mine").replace("/path/to/datasets", str(tmp_path / "datasets")) for arg in command]
        for command in marked_commands("own dataset")
    ]
    assert main(plain + TINY) == 0
    assert "ELASTIC on mine (1 epochs" in capsys.readouterr().out
    config = build_config("ELASTIC", "mine", config_dict={"data_path": str(tmp_path / "datasets")})
    assert config["load_col"] is None  # no YAML for this dataset: every column is loaded

    assert main(long_history + TINY) == 0
    out = capsys.readouterr().out
    assert "ChunkedELASTIC on mine (1 epochs" in out and "best valid (NDCG@10 = " in out
    checkpoint = out.split("checkpoint: ")[1].strip()
    trained = load_checkpoint(checkpoint)["config"]
    # the fast scheme (every position of each window) at a long N, with the recommended settings and the protocol
    assert trained["model"] == "ChunkedELASTIC" and trained["train_all_positions"] is True
    assert trained["MAX_ITEM_LIST_LENGTH"] == 200 and trained["learning_rate"] == 0.002
    assert trained["warmup_steps"] == 500
    assert trained["valid_metric"] == "NDCG@10" and trained["eval_args"]["split"] == {"LS": "valid_and_test"}


def test_each_recommended_setting_is_a_known_key_and_the_models_yaml_repeats_it():
    rows = re.findall(r"^\| (\w+) \| `([^`]*)` \|", README.split("## Recommended settings", 1)[1], re.M)
    assert {model for model, _ in rows} >= {"ELASTIC", "SASRec", "LinRec", "CausalELASTIC", "CausalSASRec"}
    for model, flags in rows:
        _, settings = parse_args([f"--model={model}", *shlex.split(flags)])
        check_config_keys(settings, f"README, {model}")  # a renamed key fails here
        config = build_config(model, "ml-100k", config_dict=dict(settings))
        assert {key: str(config[key]) for key in settings} == settings  # each value reaches the config as written
        yaml_file = plugin_yaml("model", model)
        if yaml_file:  # the plugin's models; SASRec's YAML is RecBole's
            with open(yaml_file, encoding="utf-8") as f:
                comment = f.read().split("\n", 2)[1]
            assert comment == f"#   {flags}", (model, comment)
