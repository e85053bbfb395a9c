#!/usr/bin/env bash
# ChunkedELASTIC ablations on a window of several chunks: ml-100k at N = 200 (C = 50 gives up to 4 chunks),
# 10 epochs, dropout 0.2, lr 0.002, one run per variant and seed. Results go to
# benchmarks/results/ml-100k-chunked-ablations-n200/VARIANT.
#   SEEDS=2020 bash benchmarks/chunked_ablations.sh [VARIANT ...]
# Variants: defaults recency no-memory no-local c25 c100 (all when none is given).
# The recorded runs (docs/RESULTS.md) ran on commit db6272b, which tiled windows and batched 2048 // N of them;
# on later commits add --train_window_stride=200 --train_batch_counts=slots (EXTRA_FLAGS) for that protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A flags=(
  [defaults]=""
  [recency]="--causal_recency_bias=True"
  [no-memory]="--use_interest_memory=False"
  [no-local]="--local_attention=False"
  [c25]="--interest_chunk_size=25"
  [c100]="--interest_chunk_size=100"
)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(defaults recency no-memory no-local c25 c100)
for variant in "${variants[@]}"; do
  # shellcheck disable=SC2086
  python run_recbole_elastic.py --model=ChunkedELASTIC --dataset=ml-100k --config_files=benchmarks/configs/ml-100k.yaml \
    --MAX_ITEM_LIST_LENGTH=200 --epochs=10 --stopping_step=10 --seeds="${SEEDS:-2020}" --gpu_id= \
    --hidden_dropout_prob=0.2 --attn_dropout_prob=0.2 --learning_rate=0.002 ${flags[$variant]} ${EXTRA_FLAGS:-} \
    --output_dir="benchmarks/results/ml-100k-chunked-ablations-n200/$variant-${SEEDS:-2020}"
done
