"""A full-size stand-in for RecBole's amazon-books ratings file, for benchmarks where the real file is unavailable.

Amazon Books (2014 ratings, RecBole's ``amazon-books.inter``) has 22,507,155 ratings by 8,026,324 users of
2,330,066 items. After the plugin's dataset settings (ratings >= 3, 10-core users and items) it has 248,313
users, 155,749 items and 6.03M interactions. The stand-in has the same row, user and item counts, heavy-tailed
user activity and item popularity (power laws chosen so that filtering leaves about those counts: ``--check``
prints them), Amazon's rating mix, and timestamps between May 1996 and July 2014. Users pick
items independently of each other, so it measures cost, not accuracy.

    python benchmarks/amazon_books_standin.py --out ../standin            # writes ../standin/amazon-books/...
    python benchmarks/amazon_books_standin.py --check                      # counts after filtering, no file
    python benchmarks/amazon_books_standin.py --scale 0.01 --out /tmp/s    # 1% of the rows, users and items

Seeded and vectorised: the same arguments write the same file (about 1 GB at full size, ~1 minute on 2 cores).
"""

import argparse
import os
import time
from typing import Dict, Tuple

import numpy as np

ROWS, USERS, ITEMS = 22_507_155, 8_026_324, 2_330_066
RATINGS, RATING_SHARES = (1, 2, 3, 4, 5), (0.06, 0.05, 0.09, 0.21, 0.59)  # Amazon's ratings lean to 5 stars
FIRST_TIME, LAST_TIME = 831_772_800, 1_406_073_600  # 1996-05-11 .. 2014-07-23
# Activity of the r-th most active user (popularity of the r-th most popular item): a broad power law
# (r + offset)^-exponent that gives the 10-core its size, mixed with a Zipf head (r + 10)^-1 holding head_share of
# the draws, which gives the heaviest users and items thousands of ratings. Chosen with --check (see the docstring).
USER_LAW = {"exponent": 2.3, "offset": 180_000, "head_share": 0.07}
ITEM_LAW = {"exponent": 2.0, "offset": 45_000, "head_share": 0.10}


def power_law_choice(
    rng: np.random.Generator, size: int, draws: int, exponent: float, offset: float, head_share: float
) -> np.ndarray:
    """``draws`` ids in ``0..size-1``: each id once, the rest drawn from the mixture of USER_LAW's docstring."""
    ranks = np.arange(size, dtype=np.float64)
    broad, head = (ranks + offset) ** -exponent, (ranks + 10.0) ** -1.0
    weights = (1 - head_share) * broad / broad.sum() + head_share * head / head.sum()
    cumulative = np.cumsum(weights)
    extra = np.searchsorted(cumulative, rng.random(draws - size) * cumulative[-1], side="right").clip(max=size - 1)
    ids = np.concatenate([np.arange(size), extra])
    return ids[rng.permutation(draws)]


def generate(seed: int = 2014, scale: float = 1.0) -> Dict[str, np.ndarray]:
    """The stand-in's columns: user and item ids (integers, ranked by activity), rating and timestamp."""
    rng = np.random.default_rng(seed)
    rows, users, items = (max(int(round(n * scale)), 1) for n in (ROWS, USERS, ITEMS))
    user_law = {**USER_LAW, "offset": USER_LAW["offset"] * scale}
    item_law = {**ITEM_LAW, "offset": ITEM_LAW["offset"] * scale}
    return {
        "user": power_law_choice(rng, users, rows, **user_law).astype(np.int32),
        "item": power_law_choice(rng, items, rows, **item_law).astype(np.int32),
        "rating": rng.choice(np.array(RATINGS, dtype=np.float32), size=rows, p=RATING_SHARES),
        "timestamp": rng.integers(FIRST_TIME, LAST_TIME, size=rows),
    }


def filtered_counts(columns: Dict[str, np.ndarray], min_rating: float = 3, core: int = 10) -> Tuple[int, int, int]:
    """(users, items, interactions) after ``rating >= min_rating`` and iterative ``core``-core filtering, as the
    plugin's amazon-books settings make RecBole filter."""
    keep = columns["rating"] >= min_rating
    user, item = columns["user"][keep], columns["item"][keep]
    while True:
        user_counts = np.bincount(user)
        item_counts = np.bincount(item)
        keep = (user_counts[user] >= core) & (item_counts[item] >= core)
        if keep.all():
            return len(np.unique(user)), len(np.unique(item)), len(user)
        user, item = user[keep], item[keep]


def user_token(ids: np.ndarray) -> np.ndarray:
    """Reviewer-id-like tokens: 'A' and 13 upper-case hexadecimal digits (Amazon's are 14 characters too)."""
    return np.char.add("A", np.char.zfill(np.char.upper(np.vectorize(np.base_repr)(ids, 16)), 13))


def write_inter(columns: Dict[str, np.ndarray], folder: str, chunk_rows: int = 2_000_000) -> str:
    """Write ``folder/amazon-books.inter`` in RecBole's atomic format; returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "amazon-books.inter")
    # Ids are written through a shuffled map so the file's order says nothing about activity ranks.
    rng = np.random.default_rng(0)
    user_names = user_token(rng.permutation(columns["user"].max() + 1))
    item_names = np.char.zfill(rng.permutation(columns["item"].max() + 1).astype(str), 10)  # ASIN-like
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for start in range(0, len(columns["user"]), chunk_rows):
            part = slice(start, start + chunk_rows)
            lines = np.char.add(np.char.add(user_names[columns["user"][part]], "\t"), item_names[columns["item"][part]])
            ratings = columns["rating"][part].astype(np.int64).astype(str)
            times = columns["timestamp"][part].astype(str)
            lines = np.char.add(np.char.add(np.char.add(np.char.add(lines, "\t"), ratings), "\t"), times)
            f.write("\n".join(lines.tolist()) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="data_path to write amazon-books/amazon-books.inter under")
    parser.add_argument("--seed", type=int, default=2014)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the rows, users and items")
    parser.add_argument("--check", action="store_true", help="print the counts after filtering")
    args = parser.parse_args()
    start = time.perf_counter()
    columns = generate(args.seed, args.scale)
    print(f"generated {len(columns['user']):,} rows in {time.perf_counter() - start:.0f} s")
    if args.check or not args.out:
        users, items, interactions = filtered_counts(columns)
        print(f"after ratings >= 3 and 10-core: {users:,} users, {items:,} items, {interactions:,} interactions")
    if args.out:
        path = write_inter(columns, os.path.join(args.out, "amazon-books"))
        print(f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
