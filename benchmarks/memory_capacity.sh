#!/usr/bin/env bash
# Does interest-memory capacity pay? ELASTIC on ml-100k at memory_keys n in {16, 64, 256, 1024} (n^2 slots), all
# else fixed (the tuned ml-100k configuration of docs/RESULTS.md), same epoch budget; plus dense Adam at n=64.
# Usage: bash benchmarks/memory_capacity.sh [EPOCHS]   (results in benchmarks/results/memory-capacity/)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-2}
out=benchmarks/results/memory-capacity
common=(--model=ELASTIC --dataset=ml-100k --config_files=benchmarks/configs/ml-100k.yaml --seeds=2020
        --epochs="$epochs" --learning_rate=0.002 --hidden_dropout_prob=0.2 --attn_dropout_prob=0.2)
python run_recbole_elastic.py "${common[@]}" --memory_keys=64 --memory_sparse_updates=False --output_dir="$out/n64-dense"
for n in 64 1024 256 16; do
    python run_recbole_elastic.py "${common[@]}" --memory_keys="$n" --output_dir="$out/n$n"
done
