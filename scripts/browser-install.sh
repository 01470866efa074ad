#!/usr/bin/env bash
# A headless browser for the `smet-compare` HTML report test (tests/test_report_browser.py):
# Debian's chromium from the package registry. Idempotent: does nothing when chromium is already on
# PATH; otherwise needs root (CI runs as root on a fresh machine). Quiet unless it installs.
#
#   scripts/browser-install.sh          # install chromium once (apt-get update + install, ~1 min)
#   scripts/browser-install.sh check    # exit 0 when chromium is installed, 3 when not
set -euo pipefail

find_browser() { command -v chromium || command -v chromium-browser || true; }

if [[ "${1:-install}" == "check" ]]; then
  b="$(find_browser)"
  [[ -n "$b" ]] && { echo "browser-install: $b ($("$b" --version 2>/dev/null | head -1))"; exit 0; }
  echo "browser-install: chromium not installed"; exit 3
fi

if [[ -n "$(find_browser)" ]]; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "browser-install: chromium is not installed and this is not root: run as root" \
       "(or: sudo apt-get install -y --no-install-recommends chromium)" >&2
  exit 1
fi
echo "browser-install: installing chromium (apt)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
b="$(find_browser)"
[[ -n "$b" ]] || { echo "browser-install: chromium still not on PATH after apt-get install" >&2; exit 1; }
echo "browser-install: $b ($("$b" --version 2>/dev/null | head -1))"
