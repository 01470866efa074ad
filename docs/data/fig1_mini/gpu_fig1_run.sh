#!/usr/bin/env bash
# Issue 14 fig1_mini runs on one H200 (EXPS= the experiments of this call), 10 processes at a time: call A,
# kept as it ran (its setup lines are the pilot's; later calls source gpu_setup.sh).
set -uo pipefail
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src SMET_CACHE_DIR=/tmp/smetcache SMET_DEBIAN_CORPUS=/tmp/dc FIDELITY_EXPORT=$OUT
mkdir -p /tmp/dc && tar xJf .cache/debian_corpus.tar.xz -C /tmp/dc --strip-components=1
ls -la /tmp/dc > "$OUT/corpus_ls.txt"; echo "unpacked in $(( $(date +%s) - t0 ))s"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export FIDELITY_TRAINER="trainer=gpu trainer.precision=bf16-true"
export FIDELITY_EXPERIMENTS=${EXPS}
scripts/gpu-fidelity.sh /tmp/fig1 python3 ${PAR:-10} "${STEPS:-}" ${BUDGET:-560} > "$OUT/pilot.log" 2>&1
echo "pilot rc=$? total $(( $(date +%s) - t0 ))s"
grep -E "^=== |data |tok|skipped|stopped" "$OUT/pilot.log" | head -40
cp /tmp/fig1/runs.json "$OUT/" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader
