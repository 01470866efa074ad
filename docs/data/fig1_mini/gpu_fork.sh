#!/usr/bin/env bash
# Issue 14 item 5, the fork test at fig1_mini scale on one H200 (docs/fork_test.md): a static run of
# `+experiment=fig1_mini` forked into 7 treatments of one identical topology update, 300 steps each.
# Four processes at once: LR 1e-3, 4e-3, 8e-3 forked at step 500, and LR 4e-3 forked at step 1000.
# (Step 1500 cannot be forked: fig1_mini ends there.) JOBS="LR:AT ..." and TREATMENTS=a,b,c choose a subset:
#   JOBS="0.001:1000 0.008:1000" TREATMENTS=control,naive,reset_only,smet bash docs/data/fig1_mini/gpu_fork.sh Run from the repository root with .whl and
# .cache/debian_corpus.tar.xz carried:   bash docs/data/fig1_mini/gpu_fork.sh
set -uo pipefail
t0=$(date +%s)
source docs/data/fig1_mini/gpu_setup.sh
common=(+experiment=fig1_mini trainer=gpu trainer.precision=bf16-true model.loss_impl=exact fork.steps=300)
python3 -m smet.fidelity.cli prepare --experiments fig1_mini trainer=gpu trainer.precision=bf16-true > "$OUT/prep.log" 2>&1
echo "prep done $(( $(date +%s) - t0 ))s"
mkdir -p "$OUT/fork"
for job in ${JOBS:-0.001:500 0.004:500 0.008:500 0.004:1000}; do
  lr=${job%:*}; at=${job#*:}
  timeout ${RUN_TIMEOUT:-420} python3 -m smet.fidelity.fork "${common[@]}" optimizer.lr=$lr "fork.at=[$at]" \
    fork.out=/tmp/fork/lr${lr}_at$at ${TREATMENTS:+"fork.treatments=[$TREATMENTS]"} > "$OUT/fork/lr${lr}_at$at.log" 2>&1 &
done
wait
echo "forks done $(( $(date +%s) - t0 ))s"
for d in /tmp/fork/*/; do n=$(basename "$d"); mkdir -p "$OUT/fork/$n"; cp "$d"/{fork.csv,summary.json,fork.png} "$OUT/fork/$n/" 2>/dev/null; done
tar czf "$OUT/fork-results.tar.gz" -C "$OUT" fork && rm -rf "$OUT/fork"
grep -h "loss - control\|wrote\|Error\|error" /tmp/fork/*/../*.log 2>/dev/null | head -0
tar xzf "$OUT/fork-results.tar.gz" -O --wildcards '*.log' | grep -h "loss - control\|wrote\|rror" | cut -c1-220
echo "done $(( $(date +%s) - t0 ))s"
