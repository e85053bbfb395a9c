"""Convert the common one-line-per-user sequence format into RecBole atomic files.

Many sequential-recommendation repositories ship ``<dataset>.txt`` with one user per line: the user id, then the
user's items in time order, separated by spaces (``1 12 5 33 ...``). ::

    python -m recbole_elastic.convert Beauty.txt --dataset=Beauty --output_dir=datasets

writes ``datasets/Beauty/Beauty.inter`` (``user_id:token item_id:token timestamp:float``) with each item's position
in its line as the timestamp, so RecBole's time ordering reproduces the file's order. Train with
``--dataset=Beauty --data_path=datasets``.
"""

import argparse
import os
import sys
from typing import List, Optional

from recbole_elastic.atomic import atomic_path
from recbole_elastic.errors import DatasetFormatError, ElasticError

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def convert_sequences(txt_path: str, dataset: str, output_dir: str) -> str:
    """Write ``output_dir/dataset/dataset.inter`` from a one-line-per-user file; return its path."""
    if not os.path.isfile(txt_path):
        raise DatasetFormatError(f"{txt_path} not found: pass the one-line-per-user .txt file to convert.")
    folder = os.path.join(output_dir, dataset)
    os.makedirs(folder, exist_ok=True)
    inter_path = os.path.join(folder, f"{dataset}.inter")
    with open(txt_path, encoding="utf-8") as source, atomic_path(inter_path) as temporary:
        with open(temporary, "w", encoding="utf-8") as target:
            target.write(HEADER)
            for line_number, line in enumerate(source, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2:
                    raise DatasetFormatError(
                        f"{txt_path}, line {line_number}: '{line.strip()}' has a user but no items; each line is "
                        "'user item item ...'."
                    )
                user, items = fields[0], fields[1:]
                target.writelines(f"{user}\t{item}\t{position}\n" for position, item in enumerate(items))
    return inter_path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Convert 'user item item ...' lines into a RecBole .inter file.")
    parser.add_argument("txt", help="the one-line-per-user file")
    parser.add_argument("--dataset", required=True, help="the dataset name (the .inter file and its folder)")
    parser.add_argument("--output_dir", default="dataset", help="the folder to pass as --data_path (default: dataset)")
    args = parser.parse_args(argv)
    try:
        path = convert_sequences(args.txt, args.dataset, args.output_dir)
    except ElasticError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}; train with --dataset={args.dataset} --data_path={args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
