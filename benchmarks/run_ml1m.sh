#!/usr/bin/env bash
# ELASTIC vs SASRec vs LinRec on ml-1m (the paper's dataset), N=200, RecBole's leave-one-out protocol.
#   bash benchmarks/run_ml1m.sh        # one GPU, full budget: up to 200 epochs, early stopping after 10 without gain
#   bash benchmarks/run_ml1m.sh cpu    # 2-core CPU budget: users 1..1000 only (155k of the 1M ratings),
#                                      # 2 epochs per model; the same protocol otherwise
# Needs ml-1m as RecBole atomic files in ../shared/data/ml-1m (or set DATA_PATH). MODELS, and for the CPU
# budget USERS and EPOCHS, can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH="${DATA_PATH:-../shared/data}"
MODELS="${MODELS:-ELASTIC,SASRec,LinRec}"
if [ "${1:-gpu}" = "cpu" ]; then
  users="${USERS:-1000}"
  # A full ml-1m epoch takes about an hour per model on 2 cores, so the CPU budget keeps the first $users users
  # (by original UserID) in a derived dataset outside the repository, and applies ml-1m's own settings to it.
  name="ml-1m-u${users}"
  subset_root="${TMPDIR:-/tmp}/recbole-elastic-data"
  mkdir -p "$subset_root/$name"
  awk -F'\t' -v last="$users" 'NR == 1 || $1 <= last' "$DATA_PATH/ml-1m/ml-1m.inter" > "$subset_root/$name/$name.inter"
  python run_recbole_elastic.py --model="$MODELS" --dataset="$name" --seeds=2020 \
    --config_files="benchmarks/configs/ml-1m.yaml recbole_elastic/properties/dataset/ml-1m.yaml" \
    --data_path="$subset_root" --gpu_id= --epochs="${EPOCHS:-2}" --train_batch_size=512 \
    --output_dir="benchmarks/results/ml-1m-cpu"
else
  python run_recbole_elastic.py --model="$MODELS" --dataset=ml-1m --seeds=2020 \
    --config_files=benchmarks/configs/ml-1m.yaml --data_path="$DATA_PATH" --gpu_id=0 \
    --output_dir="benchmarks/results/ml-1m-gpu"
fi
