#!/usr/bin/env bash
# ELASTIC vs SASRec vs LinRec on ml-1m (the paper's dataset), N=200, RecBole's leave-one-out protocol.
#   bash benchmarks/run_ml1m.sh            # a single GPU: full budget (200 epochs, early stopping after 10)
#   bash benchmarks/run_ml1m.sh cpu        # 2-core CPU budget: 2 epochs per model, about 6 hours in all
# Needs ml-1m as RecBole atomic files in ../shared/data/ml-1m (or set DATA_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH="${DATA_PATH:-../shared/data}"
MODELS="${MODELS:-ELASTIC,SASRec,LinRec}"
if [ "${1:-gpu}" = "cpu" ]; then
  budget=(--gpu_id= --epochs=2 --train_batch_size=512)
  out=benchmarks/results/ml-1m-cpu
else
  budget=(--gpu_id=0)
  out=benchmarks/results/ml-1m-gpu
fi
python run_recbole_elastic.py --model="$MODELS" --dataset=ml-1m --seeds=2020 \
  --config_files=benchmarks/configs/ml-1m.yaml --data_path="$DATA_PATH" "${budget[@]}" --output_dir="$out"
