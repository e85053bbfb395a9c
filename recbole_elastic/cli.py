"""Command line: ``python run_recbole_elastic.py [--model=ELASTIC] [--dataset=ml-100k] [--key=value ...]``."""

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

from recbole_elastic.errors import ElasticError

# The embedded default finishes in about 15 minutes on 2 CPU cores; pass --epochs=300 (RecBole's default, with
# early stopping) to train fully.
QUICK_START_BUDGET = {"epochs": 8}


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """The CLI's own options, and every other ``--key=value`` as a RecBole config override (strings)."""
    parser = argparse.ArgumentParser(
        description="Train and evaluate ELASTIC (or any RecBole model) with RecBole's pipeline. "
        "Any other --key=value is passed to RecBole's Config, e.g. --epochs=300 --learning_rate=0.001.",
    )
    parser.add_argument("--model", "-m", default="ELASTIC", help="model name: ELASTIC or any RecBole model")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (ml-100k ships with RecBole)")
    parser.add_argument("--config_files", default=None, help="config files, separated by spaces")
    args, rest = parser.parse_known_args(argv)
    overrides: Dict[str, Any] = {}
    for arg in rest:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not sep:
            parser.error(f"unrecognised argument '{arg}': config overrides are written --key=value")
        overrides[key] = value
    return args, overrides


def format_metrics(metrics: Dict[str, float]) -> str:
    return "  ".join(f"{name}: {value:.4f}" for name, value in metrics.items())


def main(argv: Optional[List[str]] = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config_files = args.config_files.split() if args.config_files else None
    config_dict = {**QUICK_START_BUDGET, **overrides}
    from recbole_elastic.quick_start import run

    try:
        result = run(model=args.model, dataset=args.dataset, config_file_list=config_files, config_dict=config_dict)
    except ElasticError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\n{result['model']} on {result['dataset']} ({result['epochs']} epochs, {result['params']} parameters)")
    print(f"best valid ({result['valid_metric']} = {result['best_valid_score']:.4f}): "
          f"{format_metrics(result['best_valid_result'])}")
    print(f"test: {format_metrics(result['test_result'])}")
    return 0
