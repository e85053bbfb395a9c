"""Time to score a user's next item after one new event: CausalELASTIC's streaming state against re-encoding.

    python benchmarks/streaming.py [--histories 100,1000,10000] [--max-len 200] [--events 100] [--users 1]
                                   [--n-items 10000] [--threads 1] [--out DIR]

One CausalELASTIC (its YAML defaults, ``MAX_ITEM_LIST_LENGTH = --max-len``) on CPU, in eval mode. For ``--users``
users, random events are folded into the streaming state one at a time (``stream_update``) until the history
reaches each length in ``--histories``; there, ``--events`` further events are timed one by one:

* ``stream``: ``stream_update`` (fold the event) + ``stream_scores`` (score every item), reading no history;
* ``reencode``: ``full_sort_predict`` on the last ``--max-len`` items (what a model without a state does per
  event), for CausalELASTIC and for CausalSASRec (softmax attention) with the same sizes.

Reports the median seconds per event and ``stream(L) / stream(first L)``: a constant state makes it ~1 whatever
the history length. Writes ``results.json`` and ``results.md`` to ``--out``.
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def median_seconds(step: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--histories", default="100,1000,10000", help="history lengths to time an event at")
    parser.add_argument("--max-len", type=int, default=200, help="N: MAX_ITEM_LIST_LENGTH, the re-encoded window")
    parser.add_argument("--events", type=int, default=100, help="events timed at each history length")
    parser.add_argument("--users", type=int, default=1, help="users updated together (a batch)")
    parser.add_argument("--n-items", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "streaming"))
    args = parser.parse_args(argv)

    import torch

    from recbole.data.interaction import Interaction

    from recbole_elastic import compat
    from recbole_elastic.standalone import build_standalone_model

    compat.apply()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    histories = sorted(int(length) for length in args.histories.split(","))
    sizes = {"n_items": args.n_items, "max_len": args.max_len}
    model = build_standalone_model("CausalELASTIC", **sizes).eval()
    sasrec = build_standalone_model("CausalSASRec", **sizes).eval()
    generator = torch.Generator().manual_seed(0)

    def next_events() -> torch.Tensor:
        return torch.randint(1, args.n_items, (args.users,), generator=generator)

    state = model.init_stream_state(args.users)
    window = torch.randint(1, args.n_items, (args.users, args.max_len), generator=generator)
    batch = Interaction({"item_id_list": window, "item_length": torch.full((args.users,), args.max_len)})
    points: List[Dict] = []
    folded = 0
    with torch.no_grad():
        for length in histories:
            to_fold, start = length - folded, time.perf_counter()
            while folded < length:
                state = model.stream_update(state, next_events())
                folded += 1
            fold_seconds = time.perf_counter() - start

            def stream_event() -> None:
                nonlocal state, folded
                state = model.stream_update(state, next_events())
                model.stream_scores(state)
                folded += 1

            stream = median_seconds(stream_event, args.events)
            reencode = median_seconds(lambda: model.full_sort_predict(batch), args.events)
            reencode_sasrec = median_seconds(lambda: sasrec.full_sort_predict(batch), args.events)
            points.append(
                {
                    "history": length,
                    "stream_seconds": stream,
                    "reencode_seconds": reencode,
                    "reencode_sasrec_seconds": reencode_sasrec,
                    "fold_seconds_per_event": fold_seconds / max(1, to_fold),  # building the state
                }
            )
            print(json.dumps(points[-1]), flush=True)
    for point in points:
        point["stream_ratio_to_first"] = point["stream_seconds"] / points[0]["stream_seconds"]

    result = {"settings": vars(args), "points": points}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    lines = [
        f"CausalELASTIC streaming, N = {args.max_len}, {args.users} user(s), {args.threads} thread(s); median ms per "
        "event",
        "",
        "| history | stream (update + score) | stream / first | re-encode last N, CausalELASTIC | "
        "re-encode last N, CausalSASRec |",
        "|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['history']} | {1e3 * p['stream_seconds']:.3f} | {p['stream_ratio_to_first']:.2f} | "
            f"{1e3 * p['reencode_seconds']:.3f} | {1e3 * p['reencode_sasrec_seconds']:.3f} |"
        )
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
