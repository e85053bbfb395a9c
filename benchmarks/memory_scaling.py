"""Training and inference cost of ELASTIC as the interest memory grows, dense against sparse slot updates.

    python benchmarks/memory_scaling.py [--keys 64,256,512,1024] [--lengths 50,1024] [--batch-size 64]
                                        [--n-items 3000] [--repeats 5] [--long-repeats 3] [--threads T]
                                        [--out FILE.md]

For every sequence length N, memory size n (``memory_keys``: n * n slots) and mode (``memory_sparse_updates``
False / True) the script builds ELASTIC from its YAML defaults (``build_standalone_model``) and the optimizer
RecBole's trainer would build through ``recbole_elastic.optim.build_optimizer`` (learner adam, lr 1e-3: dense Adam
for everything, or RecBole's Adam plus LazyAdam for the slot values). Each point runs in a fresh subprocess and
measures, on one batch of B full-length sequences with a CE loss over ``--n-items`` items:

* ``fwd+bwd``: ``zero_grad``, ``calculate_loss``, ``backward``; ``opt step``: ``optimizer.step()``; ``train`` is
  their sum. Best (minimum) of ``--repeats`` (``--long-repeats`` for N >= 512) after two warm-up steps, which also
  allocate the optimizer state: other processes on a shared CPU only ever add time, so the minimum is the least
  noisy estimate (as ``timeit`` advises);
* ``eval fwd``: ``full_sort_predict`` under ``torch.no_grad`` in eval mode, best of the same count;
* ``resident``: resident memory (VmRSS) after the warm-up minus VmRSS before the model was built (but after a tiny
  model's step, so imports and one-time setup are left out): weights, optimizer state, what the allocator keeps;
* ``step peak``: peak resident memory (VmHWM, reset just before) during one more training step above the resident
  memory before it, after ``malloc_trim`` (as ``efficiency.py``): what one step allocates on top.

``t/t(64)`` divides a time by the time of the smallest memory at the same N and mode. The issue's target (sparse
training step at the largest n at most 1.3x the smallest, at the shortest N) is also measured paired: both sparse
models in one process, ``--paired-repeats`` training steps each, alternating, so that load changes hit both.

Wall-clock times on a shared CPU are noisy; the load average at the start and end is printed with the table.
``--threads`` sets torch's intra-op threads: when another process keeps a core busy, fewer threads than cores
avoids OpenMP threads waiting on each other, which otherwise makes single steps 10-50x slower at random.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCHMARKS))
sys.path.insert(0, BENCHMARKS)

MODES = ("dense", "sparse")


# ----------------------------------------------------------------------------------------------- one point
def setup(n_items: int, length: int, keys: int, mode: str, batch_size: int):
    """ELASTIC with its YAML defaults, the optimizer RecBole's trainer would build for it, and one batch."""
    import torch

    from recbole.data.interaction import Interaction

    from recbole_elastic.optim import build_optimizer
    from recbole_elastic.standalone import StandInConfig, build_standalone_model

    torch.manual_seed(0)
    model = build_standalone_model(
        "ELASTIC", n_items, length, memory_keys=keys, memory_sparse_updates=mode == "sparse", loss_type="CE"
    )
    optimizer = build_optimizer(StandInConfig(learner="adam", learning_rate=1e-3, weight_decay=0.0), model)
    generator = torch.Generator().manual_seed(0)
    batch = Interaction(
        {
            "item_id_list": torch.randint(1, n_items, (batch_size, length), generator=generator),
            "item_length": torch.full((batch_size,), length, dtype=torch.long),
            "item_id": torch.randint(1, n_items, (batch_size,), generator=generator),
        }
    )
    return model.train(), optimizer, batch


def training_steps(model, optimizer, batch):
    def forward_backward():
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(batch).backward()

    def train_step():
        forward_backward()
        optimizer.step()

    return forward_backward, train_step


def seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure_point(length: int, keys: int, mode: str, args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    from efficiency import _rss_kb, peak_training_memory_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    # A tiny model's training step first, so that "resident" leaves out lazy imports and one-time kernel setup.
    model, optimizer, batch = setup(n_items=10, length=5, keys=8, mode=mode, batch_size=2)
    training_steps(model, optimizer, batch)[1]()
    del model, optimizer, batch
    peak_training_memory_mb(lambda: None, "cpu")  # malloc_trim
    rss_before_kb = _rss_kb("VmRSS")
    model, optimizer, batch = setup(args.n_items, length, keys, mode, args.batch_size)
    forward_backward, train_step = training_steps(model, optimizer, batch)

    for _ in range(2):
        train_step()
    resident_mb = (_rss_kb("VmRSS") - rss_before_kb) / 1024
    repeats = args.long_repeats if length >= 512 else args.repeats
    fwd_bwd, opt_step = [], []
    for _ in range(repeats):
        fwd_bwd.append(seconds(forward_backward))
        opt_step.append(seconds(optimizer.step))
    step_peak_mb = peak_training_memory_mb(train_step, "cpu")

    model.eval()
    with torch.no_grad():
        model.full_sort_predict(batch)
        eval_forward = [seconds(lambda: model.full_sort_predict(batch)) for _ in range(repeats)]
    return {
        "status": "ok",
        "optimizer": type(optimizer).__name__,
        "repeats": repeats,
        "fwd_bwd_ms": 1000 * min(fwd_bwd),
        "opt_step_ms": 1000 * min(opt_step),
        "train_ms": 1000 * min(f + o for f, o in zip(fwd_bwd, opt_step)),
        "eval_ms": 1000 * min(eval_forward),
        "resident_mb": resident_mb,
        "step_peak_mb": step_peak_mb,
    }


def measure_pair(length: int, small: int, large: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Sparse training steps at n=``small`` and n=``large`` in one process, interleaved: load drifts hit both."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {n: training_steps(*setup(args.n_items, length, n, "sparse", args.batch_size))[1] for n in (small, large)}
    for step in steps.values():
        step(), step()  # warm-up, optimizer state
    times: Dict[int, List[float]] = {small: [], large: []}
    for i in range(args.paired_repeats):
        for n in (small, large) if i % 2 == 0 else (large, small):
            times[n].append(1000 * seconds(steps[n]))
    return {
        "status": "ok",
        "median_ms": [statistics.median(times[n]) for n in (small, large)],
        "min_ms": [min(times[n]) for n in (small, large)],
    }


def run_subprocess(extra: List[str], args: argparse.Namespace) -> Dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), *extra]
    for key in ("batch_size", "n_items", "repeats", "long_repeats", "paired_repeats", "threads"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=args.point_timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {args.point_timeout} s)"}
    lines = process.stdout.strip().splitlines()
    if process.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"status": "error: " + (process.stderr.strip().splitlines() or ["?"])[-1][:200]}


def run_point(length: int, keys: int, mode: str, args: argparse.Namespace) -> Dict[str, Any]:
    return run_subprocess(["--point", str(length), str(keys), mode], args)


# ----------------------------------------------------------------------------------------------- the table
def to_markdown(points: List[Dict[str, Any]], pair: Dict[str, Any], args: argparse.Namespace, header: str) -> str:
    def ratio(point, key):
        base = next(p for p in points if (p["length"], p["mode"]) == (point["length"], point["mode"]))
        return f"{point[key] / base[key]:.2f}" if base.get("status") == "ok" else "-"

    lines = [
        header,
        "",
        "| N | n (slots) | mode | fwd+bwd ms | opt step ms | train ms | train t/t(64) | opt t/t(64) | eval fwd ms "
        "| eval t/t(64) | resident MiB | step peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        where = f"| {p['length']} | {p['keys']} ({p['keys'] ** 2:,}) | {p['mode']} "
        if p["status"] != "ok":
            lines.append(where + f"| {p['status']} |" + " |" * 8)
            continue
        lines.append(
            where + f"| {p['fwd_bwd_ms']:.1f} | {p['opt_step_ms']:.1f} | {p['train_ms']:.1f} | {ratio(p, 'train_ms')} "
            f"| {ratio(p, 'opt_step_ms')} | {p['eval_ms']:.1f} | {ratio(p, 'eval_ms')} | {p['resident_mb']:.0f} "
            f"| {p['step_peak_mb']:.0f} |"
        )
    lines += ["", target_lines(points, pair, args)]
    return "\n".join(lines)


def target_lines(points: List[Dict[str, Any]], pair: Dict[str, Any], args: argparse.Namespace) -> str:
    """The issue's target: sparse train step at the largest n <= 1.3x the smallest n, at the shortest N.

    Met only if the table's ratio and both ratios of the paired, interleaved measurement are at most 1.3.
    """
    length, small, large = min(args.lengths), min(args.keys), max(args.keys)
    sparse = {p["keys"]: p for p in points if (p["length"], p["mode"]) == (length, "sparse") and p["status"] == "ok"}
    if small not in sparse or large not in sparse or pair.get("status") != "ok":
        return "Target: not measured."
    table_ratio = sparse[large]["train_ms"] / sparse[small]["train_ms"]
    median_ratio = pair["median_ms"][1] / pair["median_ms"][0]
    min_ratio = pair["min_ms"][1] / pair["min_ms"][0]
    verdict = "met" if max(table_ratio, median_ratio, min_ratio) <= 1.3 else "NOT met"
    return (
        f"Target: sparse training step at n={large} at most 1.3x the step at n={small} (B={args.batch_size}, "
        f"N={length}). Table (separate processes): {table_ratio:.2f}x. Paired (both models in one process, "
        f"{args.paired_repeats} interleaved steps each): median {pair['median_ms'][1]:.1f} / "
        f"{pair['median_ms'][0]:.1f} ms = {median_ratio:.2f}x, best {pair['min_ms'][1]:.1f} / "
        f"{pair['min_ms'][0]:.1f} ms = {min_ratio:.2f}x. **{verdict}** (met only if all three are <= 1.3)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="64,256,512,1024", help="memory_keys values n (n * n slots)")
    parser.add_argument("--lengths", default="50,1024", help="sequence lengths N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-items", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-repeats", type=int, default=3, help="repeats for N >= 512")
    parser.add_argument("--paired-repeats", type=int, default=30, help="interleaved steps of the target check")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--point-timeout", type=int, default=600)
    parser.add_argument("--out", default=None, help="also write the Markdown table to this file")
    parser.add_argument("--point", nargs=3, metavar=("N", "KEYS", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--pair", nargs=3, type=int, metavar=("N", "SMALL", "LARGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.point:
        length, keys, mode = int(args.point[0]), int(args.point[1]), args.point[2]
        print(json.dumps(measure_point(length, keys, mode, args)))
        return
    if args.pair:
        print(json.dumps(measure_pair(*args.pair, args)))
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.lengths = [int(n) for n in args.lengths.split(",")]
    args.keys = keys = [int(n) for n in args.keys.split(",")]
    command = "python benchmarks/memory_scaling.py " + " ".join(sys.argv[1:])
    header = (
        f"`{command.strip()}`\n\nELASTIC YAML defaults (hidden 64, 2 blocks, 8 interests, top-8, key dim 32), "
        f"B={args.batch_size}, {args.n_items} items, CE loss, Adam lr 1e-3; torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start."
    )
    started = time.time()
    points = []
    for length in args.lengths:
        for n in keys:
            for mode in MODES:
                point = {"length": length, "keys": n, "mode": mode, **run_point(length, n, mode, args)}
                print(json.dumps(point), file=sys.stderr, flush=True)
                points.append(point)
    points.sort(key=lambda p: (p["length"], MODES.index(p["mode"]), p["keys"]))
    pair = run_subprocess(["--pair", str(min(args.lengths)), str(min(keys)), str(max(keys))], args)
    print(json.dumps({"pair": pair}), file=sys.stderr, flush=True)
    footer = f"Wall time of the run: {time.time() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at the end."
    table = to_markdown(points, pair, args, header) + f"\n\n{footer}\n"
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    main()
