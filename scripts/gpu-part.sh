# Sourced by the GPU benchmark scripts (scripts/gpu-bench.sh, scripts/gpu-issue15*.sh): `part NAME NEED ARGS...`
# runs `$py -m smet.bench.cli "${common[@]}" ARGS...` into $out/NAME.{json,md,log} unless fewer than NEED seconds
# of the script's $budget (counted from $start, in $SECONDS) are left; bounded by --time-budget and a timeout.
# Needs: py, out, budget, start, common (array); optional PART_FLAGS (array, e.g. (--force)).
# `bench_setup` (needs here, out, py): makes $out absolute, puts src/ on PYTHONPATH, installs the hydra-core /
# omegaconf / antlr4 wheels of .whl/ when the image lacks them, sets PYTORCH_CUDA_ALLOC_CONF, writes $out/gpu.txt.
part() {  # name, minimum seconds it needs, smet-bench args...
  local name=$1 need=$2; shift 2
  local left=$((budget - (SECONDS - start)))
  if (( left < need )); then
    echo "=== $name: SKIPPED (${left}s left of ${budget}s, needs ~${need}s)" | tee "$out/$name.skipped"
    return
  fi
  echo "=== $name ($((SECONDS - start))s elapsed, ${left}s left): smet-bench $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$((left - 5))" "$py" -m smet.bench.cli "${common[@]}" "$@" \
      --time-budget "$((left - need / 2))" --out "$out/$name.json" --md "$out/$name.md" ${PART_FLAGS[@]+"${PART_FLAGS[@]}"} \
      > "$out/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc wall=$((SECONDS - t0))s"
  (( rc == 0 )) || tail -20 "$out/$name.log"
}

bench_setup() {
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$py" -c "import hydra, omegaconf" 2>/dev/null; then
    site=$(mktemp -d /tmp/smet-site.XXXX)
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" \
      "$here"/.whl/hydra_core-*.whl "$here"/.whl/omegaconf-*.whl "$here"/.whl/antlr4_python3_runtime-*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:$site"
  fi
  export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
    echo "PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF"; } > "$out/gpu.txt"
}
