#!/usr/bin/env bash
# Issue 17 on one H200: SMET under DeepSpeed ZeRO-1/2 through Lightning (train.py trainer=deepspeed).
#   PART=eq    bash scripts/gpu-issue17-zero.sh $OUT   fp32, 60m, 60 steps, 2 topology updates: per-step loss of
#              ZeRO-1 and ZeRO-2 against trainer=gpu (same config), masks after the run, then ZeRO-2 resumed from
#              its step-30 DeepSpeed checkpoint directory against the uninterrupted run (bit-identical losses?)
#   PART=all: both
#   PART=bf16  bash ...: 130m bf16-mixed, 40 steps, per-step loss of SMET under ZeRO-2 minus DDP, with and without a
#              topology update, and the same for dense (where a bf16 difference starts)
#   PART=speed bash scripts/gpu-issue17-zero.sh $OUT   bf16-mixed, 130m, batch 64 x 256: tokens/s and peak of SMET
#              under DDP (1 GPU), ZeRO-1, ZeRO-2 and FSDP2, and dense under DDP and ZeRO-2
# (carry .whl; logs under $OUT)
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"; PART=${PART:-eq}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning, deepspeed; print('torch', torch.__version__, 'lightning', lightning.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | grep -v Warn | tee -a "$OUT/gpu.txt"
summary() { python3 -c "import json;s=json.load(open('$1/summary.json'));print('$2', {k:s.get(k) for k in ('steps','tokens_per_s','peak_mem_gib','val_ppl')})" 2>&1 | tee -a "$OUT/summaries.txt"; }
run() {  # name, timeout, overrides...
  local name=$1 t=$2; shift 2
  timeout $t python3 train.py hydra.run.dir=/tmp/r_$name "$@" > "$OUT/train_$name.log" 2>&1; echo "train $name rc=$?" | tee -a "$OUT/train_$name.log"
  grep -E "Training finished|Error|error:" "$OUT/train_$name.log" | tail -3
  summary /tmp/r_$name $name
}
if [ "$PART" = eq ] || [ "$PART" = all ]; then
  C="sparsity=smet model=60m data.seq_len=256 data.batch_size=16 trainer.max_steps=60 sparsity.update_interval=20 trainer.val_every_n_steps=30 trainer.checkpoint_every_n_steps=30 trainer.log_every_n_steps=1 trainer.progress_bar=plain logger=csv data.max_val_sequences=32 trainer.precision=32"
  if [ -z "${RESUME_ONLY:-}" ]; then
  run gpu 150 trainer=gpu $C
  run ds1 150 trainer=deepspeed trainer.strategy=deepspeed_stage_1 $C
  fi
  run ds2 150 trainer=deepspeed trainer.strategy=deepspeed_stage_2 $C
  [ -z "${RESUME_ONLY:-}" ] && run ds2_again 150 trainer=deepspeed trainer.strategy=deepspeed_stage_2 $C   # run-to-run noise floor
  ls -R /tmp/r_ds2/checkpoints | head -30 | tee "$OUT/ds2_ckpt.txt"
  run ds2_res 150 trainer=deepspeed trainer.strategy=deepspeed_stage_2 $C ckpt_path=/tmp/r_ds2/checkpoints/step0000030.ckpt
  python3 - <<'PY' 2>&1 | grep -v Warn | tee "$OUT/compare.txt"
import csv, glob, torch
def L(d):
    out = {}
    for r in csv.DictReader(open(d + "/metrics.csv")):
        if r.get("train/loss"): out[int(r["step"])] = float(r["train/loss"])
    return out
def section(f):
    try:
        f()
    except Exception as e:
        print(f"{f.__name__}: not compared ({type(e).__name__}: {e})")
def vs_gpu():
  g = L("/tmp/r_gpu")
  for n in ("ds1", "ds2"):
    d = L(f"/tmp/r_{n}")
    common = sorted(set(g) & set(d))
    diff = [abs(g[s] - d[s]) for s in common]
    print(f"{n} vs gpu: {len(common)} steps, max |loss diff| {max(diff):.3g} (step {common[diff.index(max(diff))]}), "
          f"mean {sum(diff)/len(diff):.3g}; first {g[common[0]]:.6f}/{d[common[0]]:.6f}, last {g[common[-1]]:.6f}/{d[common[-1]]:.6f}")
section(vs_gpu)
def first_diff(x, y):
    d = [s for s in sorted(y) if x.get(s) != y[s]]
    return d[0] if d else None
def resume():
  a, b = L("/tmp/r_ds2"), L("/tmp/r_ds2_res")
  same = [s for s in b if a.get(s) == b[s]]
  print(f"ds2 resumed from step 30: steps {min(b)}-{max(b)}: {len(same)} of {len(b)} losses bit-identical to the uninterrupted run; first differing step {first_diff(a, b)}")
def noise():
  a, c = L("/tmp/r_ds2"), L("/tmp/r_ds2_again")
  print(f"ds2 run twice (noise floor): {sum(a.get(s) == c[s] for s in c)} of {len(c)} losses bit-identical; first differing step {first_diff(a, c)}; "
        f"max |diff| {max(abs(a[s] - c[s]) for s in c):.3g}")
section(resume); section(noise)
def idx(sd):
    return {k.split("model.", 1)[-1]: v for k, v in sd.items() if k.endswith(".idx")}
def masks():
  ref = idx(torch.load("/tmp/r_gpu/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"])
  for n in ("ds1", "ds2", "ds2_res"):
    f = glob.glob(f"/tmp/r_{n}/checkpoints/last.ckpt/checkpoint/mp_rank_00_model_states.pt")
    if not f: print(n, "no DeepSpeed model states"); continue
    got = idx(torch.load(f[0], map_location="cpu", weights_only=False)["module"])
    diffs = sum(int((~torch.isin(got[k].flatten(), ref[k].flatten())).sum()) for k in ref if k in got)  # slots not in the reference mask
    total = sum(ref[k].numel() for k in ref)
    print(f"{n}: final masks of {len([k for k in ref if k in got])}/{len(ref)} layers, {diffs} of {total} active positions are not active in trainer=gpu's")
section(masks)
PY
fi
if [ "$PART" = speed ] || [ "$PART" = all ]; then
  C="model=130m data.seq_len=256 data.batch_size=64 trainer.max_steps=${STEPS:-80} trainer.precision=bf16-mixed trainer.val_every_n_steps=1000 trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=20 trainer.progress_bar=plain logger=csv data.max_val_sequences=32"
  if [ -z "${DENSE_ONLY:-}" ]; then
  run smet_ddp 120 trainer=ddp trainer.devices=1 sparsity=smet sparsity.update_interval=40 $C
  run smet_ds1 120 trainer=deepspeed trainer.strategy=deepspeed_stage_1 sparsity=smet sparsity.update_interval=40 $C
  run smet_ds2 120 trainer=deepspeed trainer.strategy=deepspeed_stage_2 sparsity=smet sparsity.update_interval=40 $C
  run smet_fsdp 120 trainer=fsdp trainer.devices=1 sparsity=smet sparsity.update_interval=40 $C
  fi
  run dense_ddp 100 trainer=ddp trainer.devices=1 sparsity=dense $C
  run dense_ds1 100 trainer=deepspeed trainer.strategy=deepspeed_stage_1 sparsity=dense $C
  run dense_ds2 100 trainer=deepspeed trainer.strategy=deepspeed_stage_2 sparsity=dense $C
fi
if [ "$PART" = bf16 ]; then  # where SMET's bf16 run under ZeRO departs from DDP's: before or after the first update
  C="sparsity=smet model=130m data.seq_len=256 data.batch_size=64 trainer.max_steps=40 trainer.precision=bf16-mixed trainer.val_every_n_steps=1000 trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=1 trainer.progress_bar=plain logger=csv data.max_val_sequences=32"
  for u in 1000 20; do
    run b_ddp_u$u 120 trainer=ddp trainer.devices=1 sparsity.update_interval=$u $C
    run b_ds2_u$u 120 trainer=deepspeed sparsity.update_interval=$u $C
  done
  run b_gpu_true_u20 120 trainer=gpu sparsity.update_interval=20 $C trainer.precision=bf16-true   # after \$C: the last override wins
  run b_dense_ddp 120 trainer=ddp trainer.devices=1 $C sparsity=dense
  run b_dense_ds2 120 trainer=deepspeed $C sparsity=dense
  python3 - <<'PY' 2>&1 | tee "$OUT/bf16_compare.txt"
import csv
def L(d):
    out = {}
    for r in csv.DictReader(open(d + "/metrics.csv")):
        if r.get("train/loss"): out[int(r["step"])] = float(r["train/loss"])
    return out
for a, b in (("b_ddp_u1000", "b_ds2_u1000"), ("b_ddp_u20", "b_ds2_u20"), ("b_ddp_u20", "b_gpu_true_u20"), ("b_dense_ddp", "b_dense_ds2")):
    try:
        x, y = L("/tmp/r_" + a), L("/tmp/r_" + b)
    except Exception as e:
        print(a, b, "not compared", e); continue
    s = sorted(set(x) & set(y))
    print(f"{b} - {a}: " + " ".join(f"{t}:{y[t] - x[t]:+.3f}" for t in s if t % 4 == 0 or t in (19, 20, 21, 22)))
    print(f"   mean over steps 30-39: {sum(y[t] - x[t] for t in s if t >= 30) / max(1, len([t for t in s if t >= 30])):+.4f}")
PY
fi
if [ "$PART" = seeds ]; then  # docs/sharding.md, pre-registered: is the bf16 ZeRO-vs-DDP gap SMET-specific?
  C="model=130m data.seq_len=256 data.batch_size=64 trainer.max_steps=80 trainer.precision=bf16-mixed trainer.val_every_n_steps=1000 trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=20 trainer.progress_bar=plain logger=csv data.max_val_sequences=128"
  for seed in 1 2 3; do
    run s${seed}_smet_ddp 100 trainer=ddp trainer.devices=1 $C sparsity=smet sparsity.update_interval=40 seed=$seed
    run s${seed}_smet_ds2 100 trainer=deepspeed $C sparsity=smet sparsity.update_interval=40 seed=$seed
    run s${seed}_dense_ddp 100 trainer=ddp trainer.devices=1 $C sparsity=dense seed=$seed
    run s${seed}_dense_ds2 100 trainer=deepspeed $C sparsity=dense seed=$seed
  done
  python3 - <<'PY' 2>&1 | tee "$OUT/seeds.txt"
import json, math, statistics as st
def ppl(n):
    return json.load(open(f"/tmp/r_{n}/summary.json"))["val_ppl"]
ds = []
for seed in (1, 2, 3):
    try:
        g_s = math.log(ppl(f"s{seed}_smet_ds2")) - math.log(ppl(f"s{seed}_smet_ddp"))
        g_d = math.log(ppl(f"s{seed}_dense_ds2")) - math.log(ppl(f"s{seed}_dense_ddp"))
    except Exception as e:
        print(f"seed {seed}: missing ({e})"); continue
    ds.append(g_s - g_d)
    print(f"seed {seed}: SMET gap {g_s:+.4f}, dense gap {g_d:+.4f}, d {g_s - g_d:+.4f}")
if len(ds) >= 2:
    m, sd = st.mean(ds), st.stdev(ds)
    print(f"mean d {m:+.4f}, std {sd:.4f}, 2 std/sqrt(n) {2 * sd / math.sqrt(len(ds)):.4f}, n {len(ds)}")
PY
fi
