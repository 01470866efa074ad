# Sourced by the fig1_mini GPU scripts (gpu_fig1_c.sh, gpu_fork.sh) on the GPU machine, from the repository
# root with .whl, .cache/debian_corpus.tar.xz (and .cache/git_commit) carried: the wheels the image lacks,
# the environment, and the corpus unpacked for data=debian_docs.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD/src SMET_CACHE_DIR=/tmp/smetcache SMET_DEBIAN_CORPUS=/tmp/dc
export SMET_GIT_COMMIT=$(cat .cache/git_commit 2>/dev/null)
mkdir -p /tmp/dc && tar xJf .cache/debian_corpus.tar.xz -C /tmp/dc --strip-components=1
