"""Command line: ``python run_recbole_elastic.py [--model=ELASTIC] [--dataset=ml-100k] [--key=value ...]``."""

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import yaml

from recbole_elastic import compat
from recbole_elastic.atomic import cleanup_on_sigterm
from recbole_elastic.config import (
    changed_on_resume,
    check_config_keys,
    load_config_files,
    protocol_file,
    run_settings,
)
from recbole_elastic.distributed import run_distributed
from recbole_elastic.errors import ConfigError, ElasticError
from recbole_elastic.evaluate import evaluate_checkpoint, read_checkpoint_config
from recbole_elastic.export import export_checkpoint
from recbole_elastic.recommendations import recommend_to_file
from recbole_elastic.sweep import run_sweep, summarise, sweep_result, to_markdown, write_results
from recbole_elastic.utils import get_model

DEFAULT_MODEL = "ELASTIC"
DEFAULT_DATASET = "ml-100k"  # ships inside RecBole's wheel: runs with no network


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """The CLI's own options, and every other ``--key=value`` as a RecBole config override (strings)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # --seed=7 is a RecBole key, not an abbreviation of --seeds
        description="Train and evaluate ELASTIC (or any RecBole model) with RecBole's pipeline. "
        "Any other --key=value is passed to RecBole's Config, e.g. --epochs=300 --learning_rate=0.001.",
    )
    # No argparse defaults for these two: --checkpoint must tell a name the user gave from the default.
    parser.add_argument("--model", "-m", default=None, help="model name: ELASTIC (default) or any RecBole model")
    parser.add_argument(
        "--dataset", "-d", default=None, help="dataset name (default ml-100k, which ships with RecBole)"
    )
    parser.add_argument("--config_files", default=None, help="config files, separated by spaces")
    parser.add_argument(
        "--protocol",
        default=None,
        help="a shipped evaluation protocol, read before --config_files: loo (leave-one-out by time, full ranking, "
        "NDCG@10 validation, early stopping; recbole_elastic/properties/protocol/loo.yaml)",
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds; with several models or seeds the run is a sweep"
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        help="where a sweep, or a resumed run, writes results.{csv,json,md} (sweep default results/sweep-...)",
    )
    parser.add_argument("--nproc", type=int, default=1, help="training processes on this machine (DDP)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of the machine holding global rank 0")
    parser.add_argument("--port", default="5678", help="free port on that machine for the rendezvous")
    parser.add_argument("--group_offset", type=int, default=0, help="processes on the machines before this one")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a saved .pth: resume training from it (a sweep's command with one model and seed resumes that run)",
    )
    parser.add_argument(
        "--eval_only", action="store_true", help="with --checkpoint: only evaluate the saved model on the test split"
    )
    recommending = parser.add_argument_group("top-k recommendations from a checkpoint (--recommend)")
    recommending.add_argument(
        "--recommend", action="store_true", help="write each user's top-k items from --checkpoint to --output"
    )
    # Without --recommend, --topk stays RecBole's key (the metrics' cut-offs, e.g. --topk=[10,20]).
    recommending.add_argument("--topk", default=None, help="with --recommend: items per user (default 10)")
    recommending.add_argument("--users", default=None, help="a file of user tokens, one a line (default every user)")
    recommending.add_argument(
        "--output",
        default=None,
        help="--recommend: the TSV to write (user, rank, item, score); --export: the folder (default: the "
        "checkpoint's path without .pth, plus -onnx)",
    )
    recommending.add_argument("--keep_seen", action="store_true", help="do not exclude the items in the history")
    recommending.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument(
        "--export",
        choices=["onnx"],
        default=None,
        help="with --checkpoint: write the model for serving (ONNX user tower, item matrix, id maps) to --output",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print RecBole's config dump, model and info lines (the log has them)",
    )
    args, rest = parser.parse_known_args(argv)
    overrides: Dict[str, Any] = {}
    for arg in rest:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not sep:
            parser.error(f"unrecognised argument '{arg}': config overrides are written --key=value")
        overrides[key] = value
    if args.verbose:
        overrides["verbose_console"] = True
    if args.topk is not None and not args.recommend:
        overrides["topk"] = args.topk
    return args, overrides


def format_metrics(metrics: Dict[str, float]) -> str:
    return "  ".join(f"{name}: {value:.4f}" for name, value in metrics.items())


def main(argv: Optional[List[str]] = None) -> int:
    """The command line's entry point; returns the exit status (2 for an error the user can act on)."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    compat.apply()
    try:
        with cleanup_on_sigterm():
            return dispatch(args, overrides)
    except ElasticError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def dispatch(args: argparse.Namespace, overrides: Dict[str, Any]) -> int:
    """Check the user's keys, then evaluate, sweep, resume or run."""
    check_config_keys(overrides, "command line")
    config_files = [protocol_file(args.protocol)] if args.protocol else []
    config_files += args.config_files.split() if args.config_files else []
    file_settings = load_config_files(config_files)
    if args.export:
        return export_main(args)
    if args.recommend:
        return recommend_main(args, overrides)
    if args.eval_only:
        return evaluate_main(args, overrides)
    models = [name.strip() for name in (args.model or DEFAULT_MODEL).split(",") if name.strip()]
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got '{args.seeds}'") from None
    if args.checkpoint:
        return resume_main(args, models, seeds, file_settings, overrides)
    dataset = args.dataset or DEFAULT_DATASET
    if len(models) > 1 or seeds:
        return sweep_main(models, dataset, seeds, args.output_dir, file_settings, overrides)
    config_dict = run_settings(models[0], file_settings, overrides, quick_start_budget=True)
    result = train(args, models[0], dataset, config_dict)
    if result is not None:
        print_run(result)
    return 0


def resume_main(
    args: argparse.Namespace,
    models: List[str],
    seeds: Optional[List[int]],
    file_settings: Dict[str, Any],
    overrides: Dict[str, Any],
) -> int:
    """Resume the checkpoint's run with its model, dataset and settings (the command line may change some).

    The command of the run being resumed may be repeated with ``--checkpoint`` added: ``--model``, ``--dataset`` and
    one ``--seeds`` value must then name the checkpoint's own, and ``--output_dir`` gets that run's results files,
    as the sweep would have written them. Settings that differ from the checkpoint's are listed before training
    (config files sit above the checkpoint's settings); a different ``seed`` is refused.
    """
    saved = read_checkpoint_config(args.checkpoint)
    model, dataset, seed = saved["model"], saved["dataset"], saved["seed"]

    def another_run(named: str, remove: str, own: Any) -> ConfigError:
        return ConfigError(
            f"--checkpoint resumes one run: {model} on {dataset}, seed {seed}; {named} names another. "
            f"Remove {remove} or make it {own}."
        )

    given = {
        "--model": (",".join(models) if args.model else model, model),
        "--dataset": (args.dataset or dataset, dataset),
        "--seeds": (",".join(map(str, seeds)) if seeds else str(seed), str(seed)),
    }
    for option, (value, own) in given.items():
        if value != own:
            raise another_run(f"{option}={value}", option, own)
    if args.output_dir and os.path.exists(os.path.join(args.output_dir, "results.json")):
        raise ConfigError(
            f"--output_dir={args.output_dir} already holds results; give a new folder for the resumed run."
        )
    config_dict = run_settings(model, file_settings, overrides, resumed_config=saved)
    changed = changed_on_resume(saved, config_dict, overrides)
    if "seed" in changed:  # the results would carry the checkpoint's seed
        _, new_seed, source = changed["seed"]
        raise another_run(f"seed: {new_seed} ({source})", "it", seed)
    if changed:  # a config file given again may undo a trial's command-line setting: say so before training
        listed = "; ".join(
            f"{key}: {old!r} -> {new!r} ({source})" for key, (old, new, source) in sorted(changed.items())
        )
        print(f"Resuming {model} with settings changed from the checkpoint's: {listed}")
    started = time.perf_counter()
    result = train(args, model, dataset, config_dict)
    if result is None:
        return 0
    print_run(result, resumed_from=args.checkpoint)
    if args.output_dir:
        rows = [summarise(model, [{"seed": seed, **result}], None)]
        results = sweep_result(dataset, [seed], rows, time.perf_counter() - started)
        results["resumed_from"] = {"checkpoint": args.checkpoint, "first_epoch": result["first_epoch"]}
        write_results(results, args.output_dir)
        print(f"results written to {args.output_dir}/results.{{md,csv,json}}")
    return 0


def train(args: argparse.Namespace, model: str, dataset: str, config_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """One training run (DDP when asked); None on a machine without global rank 0 (rank 0's machine reports)."""
    return run_distributed(
        model,
        dataset,
        config_dict=config_dict,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
        checkpoint=args.checkpoint,
    )


def print_run(result: Dict[str, Any], resumed_from: Optional[str] = None) -> None:
    epochs = f"{result['epochs']} epochs"
    if resumed_from:
        first, count = result["first_epoch"], result["epochs"]
        epochs += f" ({first}..{first + count - 1})" if count else " (the checkpoint had reached --epochs)"
        epochs += f" after resuming from {resumed_from}"
    print(f"\n{result['model']} on {result['dataset']} ({epochs}, {result['params']} parameters, {result['device']})")
    if result["best_valid_result"]:
        best = format_metrics(result["best_valid_result"])
        print(f"best valid ({result['valid_metric']} = {result['best_valid_score']:.4f}): {best}")
    else:  # eval_step <= 0: RecBole never validates
        print("best valid: none (no validation ran; the last epoch's model was tested)")
    print(f"test: {format_metrics(result['test_result'])}")
    print(f"checkpoint: {result['model_file']}")


def evaluate_main(args: argparse.Namespace, overrides: Dict[str, Any]) -> int:
    if not args.checkpoint:
        raise ConfigError("--eval_only needs --checkpoint=PATH (a .pth file saved by a training run)")
    evaluation = {key: yaml.safe_load(value) for key, value in overrides.items() if key != "verbose_console"}
    result = evaluate_checkpoint(args.checkpoint, evaluation)
    print(f"\n{result['model']} on {result['dataset']}, {result['model_file']}")
    print(f"test: {format_metrics(result['test_result'])}")
    return 0


def export_main(args: argparse.Namespace) -> int:
    if not args.checkpoint:
        raise ConfigError(f"--export={args.export} needs --checkpoint=PATH (a .pth file saved by a training run)")
    output = args.output or os.path.splitext(args.checkpoint)[0] + f"-{args.export}"
    manifest = export_checkpoint(args.checkpoint, output, args.export)
    print(
        f"\n{manifest['model']} on {manifest['dataset']}: user tower (ONNX opset {manifest['opset']}, N = "
        f"{manifest['max_seq_length']}, H = {manifest['hidden_size']}), {manifest['n_items']} item vectors and id "
        f"maps written to {output}"
    )
    print(f"onnxruntime vs PyTorch user vectors: max abs difference {manifest['onnx_vs_pytorch_max_abs_diff']:.1e}")
    return 0


def recommend_main(args: argparse.Namespace, overrides: Dict[str, Any]) -> int:
    if not args.checkpoint or not args.output:
        raise ConfigError("--recommend needs --checkpoint=PATH (a saved .pth) and --output=FILE (the TSV to write)")
    unused = ["--verbose" if key == "verbose_console" else f"--{key}" for key in overrides]
    unused += ["--config_files"] if args.config_files else []
    if unused:
        raise ConfigError(f"--recommend reads every setting from the checkpoint; remove {', '.join(unused)}.")
    try:
        topk = int(args.topk) if args.topk is not None else 10
    except ValueError:
        raise ConfigError(f"--topk takes a positive integer, got '{args.topk}'") from None
    counts = recommend_to_file(
        args.checkpoint,
        args.output,
        topk=topk,
        users_file=args.users,
        keep_seen=args.keep_seen,
        overwrite=args.overwrite,
        show_progress=sys.stdout.isatty(),
    )
    print(f"top-{topk} items for {counts['users']} users written to {args.output} ({counts['rows']} rows)")
    return 0


def sweep_main(
    models: List[str],
    dataset: str,
    seeds: Optional[List[int]],
    output_dir: Optional[str],
    file_settings: Dict[str, Any],
    command_line: Dict[str, Any],
) -> int:
    """Run the sweep, print its Markdown table; exit status 1 when any model failed."""

    for model in models:
        get_model(model)  # an unknown name fails before hours of training, with the usual message
    seeds = seeds or [int(command_line.get("seed", 2020))]
    output_dir = output_dir or os.path.join("results", f"sweep-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_sweep(models, dataset, seeds, output_dir, file_settings, command_line, quick_start_budget=True)
    print("\n" + to_markdown(result))
    print(f"results written to {output_dir}/results.{{md,csv,json}}")
    return 1 if any(row["status"] != "ok" for row in result["rows"]) else 0
