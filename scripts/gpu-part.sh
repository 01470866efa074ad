# Sourced by the GPU benchmark scripts (scripts/gpu-bench.sh, scripts/gpu-issue15*.sh): `part NAME NEED ARGS...`
# runs `$py -m smet.bench.cli "${common[@]}" ARGS...` into $out/NAME.{json,md,log} unless fewer than NEED seconds
# of the script's $budget (counted from $start, in $SECONDS) are left; bounded by --time-budget and a timeout.
# Needs: py, out, budget, start, common (array); optional PART_FLAGS (array, e.g. (--force)).
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
