"""Serving speed: the ONNX user tower in onnxruntime against PyTorch, and streaming events per second.

    python benchmarks/serving.py [--lengths 50,200,1000] [--models CausalELASTIC,ELASTIC] [--batch 32]
                                 [--repeats 7] [--users 10000] [--events-per-user 3] [--stream-batch 1000]
                                 [--single-events 300] [--n-items 10000] [--threads 1] [--out DIR]

Models at their YAML defaults (random weights: speed does not depend on them), CPU, ``--threads`` threads for
both PyTorch and onnxruntime.

* User vectors: for each model and each N in ``--lengths`` (``MAX_ITEM_LIST_LENGTH``), the model is exported with
  ``recbole_elastic.export.export_onnx`` (which checks onnxruntime against PyTorch), then one batch of
  ``--batch`` full-length histories is encoded by PyTorch (``model(item_seq, item_seq_len)``, eval mode,
  inference mode) and by onnxruntime, alternately, ``--repeats`` times each; the median seconds per batch give
  users per second and the ratio onnxruntime / PyTorch (> 1: onnxruntime is faster), in wall time and in the
  process's CPU time (with one thread, the work done; on a shared machine wall time adds waiting for a core).
* Streaming (``--stream-model``, default CausalELASTIC, N = 200): ``recbole_elastic.streaming.StreamingRecommender``
  over ``--users`` users.
  Batched: ``--events-per-user`` events per user, folded with ``fold_many`` in batches of ``--stream-batch``
  events of distinct users, after one untimed warm-up batch; events per second over all batches (and the same
  batches through the model's ``stream_update`` alone), per wall and per CPU second. One at a time:
  ``--single-events`` events of random users (who already have states), each ``fold`` timed alone (wall time,
  and the process's CPU time), and each ``fold`` + ``topk(user, 10)``.

Writes ``results.json`` and ``results.md`` to ``--out``.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks.common import write_results  # noqa: E402


def wall_and_cpu_seconds(step: Callable[[], None]) -> Tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one call. With one thread, CPU seconds are the work done:
    on a shared machine the wall time adds the time spent waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def user_vector_points(args, models: List[str], lengths: List[int]) -> List[Dict]:
    import numpy as np
    import torch

    from recbole_elastic.export import example_histories, export_onnx, onnx_session, onnx_user_vectors
    from recbole_elastic.standalone import build_standalone_model

    points = []
    for model_name in models:
        for max_len in lengths:
            torch.manual_seed(0)
            model = build_standalone_model(model_name, args.n_items, max_len).eval()
            tokens = ["[PAD]"] + [str(i) for i in range(1, args.n_items)]
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                manifest = export_onnx(model, tokens, folder)
                export_seconds = time.perf_counter() - start
                session = onnx_session(os.path.join(folder, "user_tower.onnx"), threads=args.threads)
            item_seq, item_seq_len = example_histories(args.n_items, max_len, [max_len] * args.batch, seed=1)
            with torch.inference_mode():
                expected = model(item_seq, item_seq_len).numpy()
            difference = float(np.abs(onnx_user_vectors(session, item_seq, item_seq_len) - expected).max())
            torch_times, onnx_times = [], []
            for _ in range(args.repeats):  # interleaved: both see the same load on a shared machine

                def encode_torch() -> None:
                    with torch.inference_mode():
                        model(item_seq, item_seq_len)

                torch_times.append(wall_and_cpu_seconds(encode_torch))
                onnx_times.append(wall_and_cpu_seconds(lambda: onnx_user_vectors(session, item_seq, item_seq_len)))
            torch_seconds, onnx_seconds = (
                statistics.median(wall for wall, _ in times) for times in (torch_times, onnx_times)
            )
            torch_cpu, onnx_cpu = (statistics.median(cpu for _, cpu in times) for times in (torch_times, onnx_times))
            points.append(
                {
                    "model": model_name,
                    "max_len": max_len,
                    "batch": args.batch,
                    "torch_seconds": torch_seconds,
                    "onnx_seconds": onnx_seconds,
                    "torch_users_per_second": args.batch / torch_seconds,
                    "onnx_users_per_second": args.batch / onnx_seconds,
                    "onnx_over_torch_throughput": torch_seconds / onnx_seconds,
                    "torch_cpu_seconds": torch_cpu,
                    "onnx_cpu_seconds": onnx_cpu,
                    "onnx_over_torch_throughput_cpu": torch_cpu / onnx_cpu,
                    "max_abs_diff": difference,
                    "export_check_max_abs_diff": manifest["onnx_vs_pytorch_max_abs_diff"],
                    "export_seconds": export_seconds,
                }
            )
            print(points[-1], flush=True)
    return points


def streaming_point(args) -> Dict:
    import torch

    from recbole_elastic.standalone import build_standalone_model
    from recbole_elastic.streaming import StreamingRecommender, state_leaves

    torch.manual_seed(0)
    model = build_standalone_model(args.stream_model, args.n_items, 200).eval()
    tokens = ["[PAD]"] + [f"i{i}" for i in range(1, args.n_items)]
    recommender = StreamingRecommender(model, tokens)
    generator = torch.Generator().manual_seed(2)
    users = [f"user{u}" for u in range(args.users)]

    def random_items(count: int) -> List[str]:
        return [tokens[i] for i in torch.randint(1, args.n_items, (count,), generator=generator).tolist()]

    # Batches of distinct users, each user's events in order: round-robin over the users.
    event_users = users * args.events_per_user
    event_items = random_items(len(event_users))
    batches = [
        (event_users[start : start + args.stream_batch], event_items[start : start + args.stream_batch])
        for start in range(0, len(event_users), args.stream_batch)
    ]
    recommender.fold_many(*batches[0])  # warm-up (allocates the users' rows)

    def fold_batches() -> None:
        for batch_users, batch_items in batches[1:]:
            recommender.fold_many(batch_users, batch_items)

    batched_seconds, batched_cpu = wall_and_cpu_seconds(fold_batches)
    batched_events = sum(len(batch_users) for batch_users, _ in batches[1:])

    # The same batches through the model alone (no tokens, no per-user rows): the model's own share.
    item_ids = torch.randint(1, args.n_items, (len(batches) - 1, args.stream_batch), generator=generator)

    def update_batches() -> None:
        state = model.init_stream_state(args.stream_batch)
        for row in item_ids:
            state = model.stream_update(state, row)

    model_seconds, model_cpu = wall_and_cpu_seconds(update_batches)

    single_users = [users[u] for u in torch.randint(0, args.users, (args.single_events,), generator=generator)]
    single_items = random_items(args.single_events)
    fold_times, fold_topk_times, fold_cpu_times = [], [], []
    for user, item in zip(single_users, single_items):
        start, start_cpu = time.perf_counter(), time.process_time()
        recommender.fold(user, item)
        folded, folded_cpu = time.perf_counter(), time.process_time()
        recommender.topk(user, 10)
        fold_times.append(folded - start)
        fold_cpu_times.append(folded_cpu - start_cpu)
        fold_topk_times.append(time.perf_counter() - start)
    one_user = state_leaves(recommender.gather(torch.arange(1)))
    state_bytes = sum(leaf.numel() * leaf.element_size() for leaf in one_user)
    point = {
        "model": args.stream_model,
        "max_len": 200,
        "users": args.users,
        "batched_events": batched_events,
        "stream_batch": args.stream_batch,
        "batched_events_per_second": batched_events / batched_seconds,
        "model_only_events_per_second": item_ids.numel() / model_seconds,
        "batched_events_per_cpu_second": batched_events / batched_cpu,
        "model_only_events_per_cpu_second": item_ids.numel() / model_cpu,
        "single_events": args.single_events,
        "single_fold_median_ms": 1e3 * statistics.median(fold_times),
        "single_fold_p95_ms": 1e3 * sorted(fold_times)[int(0.95 * (len(fold_times) - 1))],
        # CPU seconds of this process (time.process_time, 1 ms resolution or better): the wall time less the
        # waiting for a core on a shared machine.
        "single_fold_cpu_mean_ms": 1e3 * statistics.mean(fold_cpu_times),
        "single_fold_topk_median_ms": 1e3 * statistics.median(fold_topk_times),
        "single_fold_topk_p95_ms": 1e3 * sorted(fold_topk_times)[int(0.95 * (len(fold_topk_times) - 1))],
        "state_bytes_per_user": state_bytes,
    }
    print(point, flush=True)
    return point


def to_markdown(args, points: List[Dict], stream: Dict) -> str:
    lines = [
        f"User vectors, batch {args.batch} of full-length histories, {args.threads} thread(s), median of "
        f"{args.repeats} interleaved runs",
        "",
        "| model | N | PyTorch users/s | onnxruntime users/s | onnxruntime / PyTorch | same, CPU time | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['model']} | {p['max_len']} | {p['torch_users_per_second']:.1f} | {p['onnx_users_per_second']:.1f} "
            f"| {p['onnx_over_torch_throughput']:.2f} | {p['onnx_over_torch_throughput_cpu']:.2f} "
            f"| {p['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        f"Streaming, {args.stream_model} (defaults, N = 200, {args.n_items} items), {stream['users']} users, "
        f"{args.threads} thread(s)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| batched, fold_many of {stream['stream_batch']} events: events/s "
        f"| {stream['batched_events_per_second']:.0f} |",
        f"| the same batches, model.stream_update alone: events/s | {stream['model_only_events_per_second']:.0f} |",
        f"| batched, fold_many: events per CPU second | {stream['batched_events_per_cpu_second']:.0f} |",
        f"| model.stream_update alone: events per CPU second | {stream['model_only_events_per_cpu_second']:.0f} |",
        f"| one event, fold: median / p95 ms | {stream['single_fold_median_ms']:.2f} / "
        f"{stream['single_fold_p95_ms']:.2f} |",
        f"| one event, fold: mean CPU time ms | {stream['single_fold_cpu_mean_ms']:.2f} |",
        f"| one event, fold + topk(10): median / p95 ms | {stream['single_fold_topk_median_ms']:.2f} / "
        f"{stream['single_fold_topk_p95_ms']:.2f} |",
        f"| state per user: bytes | {stream['state_bytes_per_user']} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="50,200,1000", help="N values for the user-vector comparison")
    parser.add_argument(
        "--models", default="CausalELASTIC,ELASTIC", help="models for the user-vector comparison ('': streaming only)"
    )
    parser.add_argument("--batch", type=int, default=32, help="histories per user-vector batch")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches per side, interleaved")
    parser.add_argument("--stream-model", default="CausalELASTIC", help="the causal model whose state streams")
    parser.add_argument("--users", type=int, default=10000, help="streaming users")
    parser.add_argument("--events-per-user", type=int, default=3)
    parser.add_argument("--stream-batch", type=int, default=1000, help="events per fold_many call")
    parser.add_argument("--single-events", type=int, default=300, help="events folded one at a time")
    parser.add_argument("--n-items", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "serving"))
    args = parser.parse_args(argv)

    import torch

    from recbole_elastic import compat

    compat.apply()
    torch.set_num_threads(args.threads)
    lengths = [int(length) for length in args.lengths.split(",")]
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    points = user_vector_points(args, models, lengths) if models else []
    stream = streaming_point(args)
    result = {"settings": vars(args), "user_vectors": points, "streaming": stream}
    write_results(args.out, result, to_markdown(args, points, stream))
    return result


if __name__ == "__main__":
    main()
