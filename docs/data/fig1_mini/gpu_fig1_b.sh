#!/usr/bin/env bash
# Issue 14 fig1_mini call B: dense + smet W=0 arms through gpu-fidelity.sh, and smet 2e-3 / 4e-3 re-run to the end
# (call A stopped them at its budget, 21-42 steps short) as plain train.py processes alongside.
set -uo pipefail
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src SMET_CACHE_DIR=/tmp/smetcache SMET_DEBIAN_CORPUS=/tmp/dc FIDELITY_EXPORT=$OUT
mkdir -p /tmp/dc && tar xJf .cache/debian_corpus.tar.xz -C /tmp/dc --strip-components=1
tr=(trainer=gpu trainer.precision=bf16-true trainer.progress_bar=none trainer.model_summary=false)
python3 -m smet.fidelity.cli prepare --experiments fig1_mini "${tr[@]}" > "$OUT/prep.log" 2>&1
echo "prep done $(( $(date +%s) - t0 ))s"
mkdir -p /tmp/fig1b "$OUT/extra"
for lr in 0.002 0.004; do
  python3 train.py sparsity=smet optimizer.lr=$lr seed=0 +experiment=fig1_mini "${tr[@]}" \
    hydra.run.dir=/tmp/fig1b/smet_lr$lr-s0 > "$OUT/extra/smet_lr$lr-s0.log" 2>&1 &
done
export FIDELITY_TRAINER="trainer=gpu trainer.precision=bf16-true"
export FIDELITY_EXPERIMENTS=fig1_mini_dense,fig1_mini_smet_w0
scripts/gpu-fidelity.sh /tmp/fig1 python3 10 "" ${BUDGET:-420} > "$OUT/pilot.log" 2>&1
echo "fidelity rc=$? $(( $(date +%s) - t0 ))s"
wait
echo "extra done $(( $(date +%s) - t0 ))s"
for d in /tmp/fig1b/*/; do n=$(basename "$d"); mkdir -p "$OUT/extra/$n"; cp "$d"/{summary.json,metrics.csv,config.yaml} "$OUT/extra/$n/" 2>/dev/null; done
cat /tmp/fig1/summary.md 2>/dev/null
grep -h "steps\"\|val_ppl\|status" /tmp/fig1b/*/summary.json
