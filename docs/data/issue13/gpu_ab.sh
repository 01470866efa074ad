#!/usr/bin/env bash
# before/after smet-bench on one H200: old code (.before_src, commit bc36f47) vs new (src/), same grid, same process kind
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$PWD/.site" .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH_BASE="$PWD/.site"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
old=(--device cuda --interleave round --warmup-steps 3 --model 130m --batch 128 --seq-len 256 --vocab 4096 --precision bf16-true
     --method dense smet --density 0.5 0.25 --materialize transient persistent --update-interval 10 --steps 20 --rounds 2)
new=(model=130m data.batch_size=128 data.seq_len=256 data.tokenizer.vocab_size=4096 trainer.precision=bf16-true sparsity.update_interval=10
     sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent --device cuda --interleave round --warmup-steps 3 --steps 20 --rounds 2)
for rep in 1 2; do
  PYTHONPATH="$PWD/.before_src:$PYTHONPATH_BASE" timeout 150 python3 -m smet.cli.bench "${old[@]}" --out "$OUT/before$rep.json" > "$OUT/before$rep.txt" 2> "$OUT/before$rep.err"; echo "before$rep rc=$?"
  PYTHONPATH="$PWD/src:$PYTHONPATH_BASE" timeout 150 python3 -m smet.bench.cli "${new[@]}" --out "$OUT/after$rep.json" > "$OUT/after$rep.txt" 2> "$OUT/after$rep.err"; echo "after$rep rc=$?"
done
# an ablation only the new code can benchmark
PYTHONPATH="$PWD/src:$PYTHONPATH_BASE" timeout 120 python3 -m smet.bench.cli model=130m data.batch_size=128 trainer.precision=bf16-true \
  sparsity=dense,smet,smet_no_reset,smet_momentum_warmup sparsity.density=0.25 --device cuda --interleave round --warmup-steps 3 --steps 10 --rounds 1 \
  --out "$OUT/ablations.json" > "$OUT/ablations.txt" 2> "$OUT/ablations.err"; echo "ablations rc=$?"
for f in before1 after1 before2 after2 ablations; do echo "== $f"; grep -E "x \(|/dense" "$OUT/$f.txt" | head -12; tail -3 "$OUT/$f.err"; done
