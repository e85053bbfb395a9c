"""Memory and speed of ELASTIC against SASRec, LinRec and LightSANs as the sequence length N grows.

    python benchmarks/efficiency.py [--device cpu|cuda] [--lengths 50,200,512,1024,2048,4096] [--batch-size 16]
                                    [--models ELASTIC,SASRec,LinRec,LightSANs] [--n-items 10000] [--out DIR]

Every model is built from its real YAML defaults (the plugin's or RecBole's), with the same hidden size, layers
and heads, ``MAX_ITEM_LIST_LENGTH = N`` and a catalogue of ``--n-items`` items. Each (model, N) point runs in a
fresh subprocess, so points cannot contaminate each other, and measures:

* inference: ``full_sort_predict`` throughput (sequences/s) on batches of full length-N sequences;
* training: one optimiser step (``calculate_loss`` with CE, backward, Adam as RecBole's trainer builds it), seconds;
* peak memory of the training step: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before;
  on CPU the peak resident set (VmHWM, reset just before the step) above the resident set before it, after
  ``malloc_trim`` has returned memory freed by earlier steps to the OS (else it would hide in "before");
* parameters, and forward FLOPs of one inference batch (``torch.utils.flop_counter``).

Times are medians over ``--repeats`` after ``--warmup`` runs. A point that runs out of memory or passes
``--point-timeout`` seconds is recorded as ``oom`` / ``timeout`` and the run goes on. Writes ``results.json``,
``results.md`` (with ELASTIC/SASRec ratios per N) and ``efficiency.png`` (log-log, needs matplotlib) to ``--out``.
"""

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

DEFAULT_MODELS = "ELASTIC,SASRec,LinRec,LightSANs"
DEFAULT_LENGTHS = "50,200,512,1024,2048,4096"


# ----------------------------------------------------------------------------------------------- one point
def build_model(name: str, length: int, args: argparse.Namespace):
    """``name`` with its YAML defaults and the shared sizes, on a stand-in dataset of ``args.n_items`` items."""
    from recbole_elastic.standalone import build_standalone_model

    return build_standalone_model(
        name,
        n_items=args.n_items,
        max_len=length,
        device=args.device,
        hidden_size=args.hidden_size,
        inner_size=4 * args.hidden_size,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        loss_type="CE",
    )


def make_batch(length: int, args: argparse.Namespace):
    import torch

    from recbole.data.interaction import Interaction

    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, args.n_items, (args.batch_size, length), generator=generator)
    target = torch.randint(1, args.n_items, (args.batch_size,), generator=generator)
    lengths = torch.full((args.batch_size,), length, dtype=torch.long)
    return Interaction({"item_id_list": items, "item_length": lengths, "item_id": target}).to(args.device)


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(step, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_training_memory_mb(train_step, device: str) -> float:
    """Peak memory of one training step above the memory in use just before it, in MiB."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:  # hand memory freed by earlier steps back to the OS, so "before" counts only live memory (glibc)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM (the peak resident set) to the current resident set
    before = _rss_kb("VmRSS")
    train_step()
    return (_rss_kb("VmHWM") - before) / 1024


def forward_flops(model, batch) -> Optional[float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.full_sort_predict(batch)
        return float(counter.get_total_flops())
    except Exception:  # FLOPs are informative only; an unsupported operator must not lose the point
        return None


def measure_point(name: str, length: int, args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = build_model(name, length, args)
    batch = make_batch(length, args)
    from recbole_elastic.optim import build_optimizer
    from recbole_elastic.standalone import StandInConfig

    # Adam as RecBole's trainer builds it (ELASTIC's interest memory: lazy Adam on the retrieved rows)
    optimizer = build_optimizer(StandInConfig(learner="adam", learning_rate=1e-3, weight_decay=0.0), model)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(batch).backward()
        optimizer.step()

    model.train()
    train_step()  # Adam allocates its state on the first step: measure a steady-state step
    optimizer.zero_grad(set_to_none=True)
    peak_mb = peak_training_memory_mb(train_step, args.device)
    train_seconds = median_seconds(train_step, args.device, args.warmup, args.repeats)

    model.eval()
    with torch.no_grad():
        inference_seconds = median_seconds(
            lambda: model.full_sort_predict(batch), args.device, args.warmup, args.repeats
        )
    return {
        "status": "ok",
        "train_step_seconds": train_seconds,
        "train_peak_memory_mb": peak_mb,
        "inference_seconds": inference_seconds,
        "inference_sequences_per_second": args.batch_size / inference_seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_flops": forward_flops(model, batch),
    }


def point_main(args: argparse.Namespace) -> None:
    """Child process: measure one point and print it as JSON on the last line."""
    import torch

    if args.device == "cpu" and args.cpu_memory_limit_gb:
        limit = int(args.cpu_memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        point = measure_point(args.point_model, args.point_length, args)
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        point = {"status": "oom", "error": str(error).splitlines()[0][:200]}
    except RuntimeError as error:
        message = str(error)
        is_oom = "out of memory" in message.lower() or "can't allocate memory" in message.lower()
        point = {"status": "oom" if is_oom else "error", "error": message.splitlines()[0][:200]}
    print(json.dumps(point))


# ----------------------------------------------------------------------------------------------- the sweep
def run_point(name: str, length: int, args: argparse.Namespace) -> Dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--point-model", name, "--point-length", str(length)]
    for key in ("device", "batch_size", "n_items", "hidden_size", "n_layers", "n_heads", "warmup", "repeats"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    command += ["--cpu-memory-limit-gb", str(args.cpu_memory_limit_gb)]
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=args.point_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"over {args.point_timeout} s"}
    lines = process.stdout.strip().splitlines()
    if process.returncode == 0 and lines:
        return json.loads(lines[-1])
    if process.returncode in (-9, 137):
        return {"status": "oom", "error": "killed (out of memory)"}
    return {"status": "error", "error": (process.stderr.strip().splitlines() or ["?"])[-1][:200]}


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


# name: (model, measure) over (model, measure), per sequence length
RATIOS = (
    ("memory_elastic_over_sasrec", ("ELASTIC", "train_peak_memory_mb"), ("SASRec", "train_peak_memory_mb")),
    (
        "inference_speedup_over_sasrec",
        ("ELASTIC", "inference_sequences_per_second"),
        ("SASRec", "inference_sequences_per_second"),
    ),
    ("train_speedup_over_sasrec", ("SASRec", "train_step_seconds"), ("ELASTIC", "train_step_seconds")),
    (
        "inference_speedup_over_linrec",
        ("ELASTIC", "inference_sequences_per_second"),
        ("LinRec", "inference_sequences_per_second"),
    ),
)


def _value(points, model, key, length):
    point = points.get((model, length), {})
    return point.get(key) if point.get("status") == "ok" else None


def summarise(result: Dict[str, Any]) -> Dict[str, Any]:
    """ELASTIC/SASRec ratios per N, ELASTIC/LinRec throughput, and ELASTIC's growth from N=1024 to 4096."""
    points = {(p["model"], p["length"]): p for p in result["points"]}
    per_length = {
        length: {
            name: ratio(_value(points, *numerator, length), _value(points, *denominator, length))
            for name, numerator, denominator in RATIOS
        }
        for length in result["lengths"]
    }
    lengths = result["lengths"]
    growth = {}
    if lengths:
        high = max(lengths)
        # the target is stated from N=1024 to N=4096; other length lists use their extremes
        low = 1024 if 1024 in lengths and high > 1024 else min(lengths)
        growth = {
            "from": low,
            "to": high,
            "inference_time": ratio(
                _value(points, "ELASTIC", "inference_seconds", high),
                _value(points, "ELASTIC", "inference_seconds", low),
            ),
            "train_time": ratio(
                _value(points, "ELASTIC", "train_step_seconds", high),
                _value(points, "ELASTIC", "train_step_seconds", low),
            ),
        }
    return {"per_length": per_length, "elastic_growth": growth}


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def to_markdown(result: Dict[str, Any]) -> str:
    models, lengths = result["models"], result["lengths"]
    points = {(p["model"], p["length"]): p for p in result["points"]}
    lines = [
        f"Device {result['device']}, batch {result['batch_size']}, hidden {result['hidden_size']}, "
        f"{result['n_layers']} layers, {result['n_heads']} heads, {result['n_items']} items. "
        "Medians; memory = peak of one training step above the memory in use before it.",
        "",
    ]
    for title, key, spec in (
        ("Inference throughput (sequences/s, full_sort_predict)", "inference_sequences_per_second", ".1f"),
        ("Training step (seconds)", "train_step_seconds", ".3f"),
        ("Training-step peak memory (MiB)", "train_peak_memory_mb", ".1f"),
    ):
        lines += [f"**{title}**", "", "| N | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for length in lengths:
            cells = []
            for model in models:
                point = points.get((model, length), {})
                cells.append(_fmt(point.get(key), spec) if point.get("status") == "ok" else point.get("status", "-"))
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
        lines.append("")
    summary = result["summary"]
    lines += [
        "**ELASTIC against SASRec and LinRec**",
        "",
        "| N | memory ELASTIC/SASRec | inference speed-up vs SASRec | training speed-up vs SASRec "
        "| inference speed-up vs LinRec |",
        "|---|---|---|---|---|",
    ]
    for length in lengths:
        r = summary["per_length"][length]
        lines.append(
            f"| {length} | {_fmt(r['memory_elastic_over_sasrec'], '.1%')} | "
            f"{_fmt(r['inference_speedup_over_sasrec'], '.2f')}x | {_fmt(r['train_speedup_over_sasrec'], '.2f')}x | "
            f"{_fmt(r['inference_speedup_over_linrec'], '.2f')}x |"
        )
    growth = summary["elastic_growth"]
    if growth:
        lines += [
            "",
            f"ELASTIC time at N={growth['to']} over N={growth['from']}: inference "
            f"{_fmt(growth['inference_time'], '.2f')}, training {_fmt(growth['train_time'], '.2f')} "
            f"(N grew {growth['to'] / growth['from']:g}x).",
        ]
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    points = {(p["model"], p["length"]): p for p in result["points"]}
    panels = (
        ("train_peak_memory_mb", "training-step peak memory (MiB)"),
        ("train_step_seconds", "training step (s)"),
        ("inference_seconds", f"inference, batch of {result['batch_size']} (s)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for axis, (key, label) in zip(axes, panels):
        for model in result["models"]:
            xs = [n for n in result["lengths"] if points.get((model, n), {}).get("status") == "ok"]
            axis.plot(xs, [points[(model, n)][key] for n in xs], marker="o", label=model)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sequence length N")
        axis.set_title(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"recbole-elastic efficiency ({result['device']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="comma-separated sequence lengths")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model names")
    parser.add_argument("--n-items", type=int, default=10000)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--point-timeout", type=float, default=600, help="seconds allowed for one (model, N) point")
    parser.add_argument("--cpu-memory-limit-gb", type=float, default=16, help="address-space cap of a CPU point")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out/<device>)")
    parser.add_argument("--point-model", help=argparse.SUPPRESS)
    parser.add_argument("--point-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point_model:
        point_main(args)
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2

    from recbole_elastic.atomic import atomic_write

    models = [m for m in args.models.split(",") if m]
    lengths = [int(n) for n in args.lengths.split(",") if n]
    out = args.out or os.path.join(REPO_ROOT, "benchmarks", "out", args.device)
    os.makedirs(out, exist_ok=True)
    result: Dict[str, Any] = {
        "command": " ".join([os.path.relpath(__file__, REPO_ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "batch_size": args.batch_size,
        "hidden_size": args.hidden_size,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_items": args.n_items,
        "models": models,
        "lengths": lengths,
        "points": [],
    }
    started = time.perf_counter()
    for length in lengths:
        for model in models:
            point = {"model": model, "length": length, **run_point(model, length, args)}
            result["points"].append(point)
            shown = {k: v for k, v in point.items() if k not in ("model", "length")}
            print(f"{model:>10} N={length:<5} {json.dumps(shown)}", flush=True)
    result["wall_seconds"] = time.perf_counter() - started
    result["summary"] = summarise(result)
    markdown = to_markdown(result)
    atomic_write(os.path.join(out, "results.json"), json.dumps(result, indent=2))
    atomic_write(os.path.join(out, "results.md"), markdown)
    plotted = plot(result, os.path.join(out, "efficiency.png"))
    print("\n" + markdown)
    print(f"written to {out}: results.json, results.md" + (", efficiency.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
