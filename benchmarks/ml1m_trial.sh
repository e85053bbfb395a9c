#!/usr/bin/env bash
# One ml-1m accuracy run of issue 17's protocol (benchmarks/configs/ml-1m.yaml, N=200 unless a flag says otherwise).
#   bash benchmarks/ml1m_trial.sh NAME MODEL [--key=value ...]
# Results go to benchmarks/results/ml-1m-trials/NAME, with each test user's rank (test-ranks-MODEL-seedS.csv, which
# benchmarks/paired_users.py compares), the best checkpoint to $CHECKPOINT_DIR (outside the repository). EPOCHS (default 4, the CPU budget), SEEDS (default 2020) and DATA_PATH
# can be set from the environment. Every run recorded before train_batch_counts existed tiled its windows and
# batched 2048 // N of them: add --train_window_stride=200 --train_batch_counts=slots to repeat one of them.
# To resume a trial stopped before its results were written, repeat its command (same SEEDS) with --checkpoint=PATH
# added: the results go to its folder and name the epoch it resumed at (a folder that has results is refused).
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"; model="$2"; shift 2
python run_recbole_elastic.py --model="$model" --dataset=ml-1m --config_files=benchmarks/configs/ml-1m.yaml \
  --data_path="${DATA_PATH:-../shared/data}" --gpu_id= --epochs="${EPOCHS:-4}" --seeds="${SEEDS:-2020}" \
  --checkpoint_dir="${CHECKPOINT_DIR:-/tmp/recbole-elastic-checkpoints}" \
  --output_dir="benchmarks/results/ml-1m-trials/$name" "$@"
