#!/usr/bin/env bash
# Builds Volt's default model assets/volt-tiny end to end on CPU:
#   corpus (Debian r-cran-janeaustenr, held-out Moby Dick from r-cran-tokenizers)
#   -> BPE tokenizer -> training (about VOLT_TIME_BUDGET minutes, default 33, 2 threads)
#   -> evaluation with the PyTorch reference and the model card (README.md).
#
#   bash tools/make_default_model.sh [OUT_DIR]      # default assets/volt-tiny
#
# Environment: VOLT_WORK (scratch folder, default /tmp/volt_build), VOLT_TIME_BUDGET
# (training minutes), VOLT_STEPS (a fixed number of steps instead of the time budget).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-assets/volt-tiny}"
work="${VOLT_WORK:-/tmp/volt_build}"
budget="${VOLT_TIME_BUDGET:-33}"
steps="${VOLT_STEPS:-0}"
python3 -c "import matplotlib" 2>/dev/null || pip install -q matplotlib

start=$(date +%s)
bash tools/get_corpus.sh "$work/corpus"
python3 tools/train_tokenizer.py "$work/corpus" "$work/tokenizer"
python3 tools/train_volt.py --corpus "$work/corpus" --tokenizer "$work/tokenizer" --out "$out" \
  --time-budget "$budget" --steps "$steps" --threads 2
python3 tools/eval_volt.py --corpus "$work/corpus" --model "$out" --write-card \
  --total-wall-s "$(( $(date +%s) - start ))"
echo "make_default_model: done in $(( ($(date +%s) - start) / 60 )) min -> $out"
