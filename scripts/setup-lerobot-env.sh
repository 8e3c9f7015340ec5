#!/usr/bin/env bash
# scripts/setup-lerobot-env.sh: print the path of a Python 3.12 venv with LeRobot 0.6.1
# (images/lerobot/requirements.txt, the same pins the image installs), building it the
# first time. The venv is cached by the hash of that file: a CI run on a machine that
# built it before reuses it at once; a changed requirements file builds a new one.
#   RUNNER_LEROBOT_VENV=DIR   use (or build) this venv instead
#   RUNNER_CI_CACHE=DIR       where cached venvs live (default /var/cache/runner-ci, or
#                             ~/.cache/runner-ci when that is not writable)
# LeRobot needs Python >= 3.12 (PEP 695 syntax); torch 2.11.0 from the package index is
# its CUDA build, which runs on the CPU here. Everything is installed --no-deps from the
# pinned list, so nothing is resolved (or fetched) beyond it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reqs="$root/images/lerobot/requirements.txt"
hash="$(sha256sum "$reqs" | cut -c1-16)"
cache="${RUNNER_CI_CACHE:-/var/cache/runner-ci}"
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/runner-ci"
  mkdir -p "$cache"
fi
venv="${RUNNER_LEROBOT_VENV:-$cache/lerobot-$hash}"
stamp="$venv/.runner-lerobot"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  echo "$venv"
  exit 0
fi
python=""
for candidate in "${LEROBOT_PYTHON:-}" python3.12 "$(pyenv prefix 3.12 2>/dev/null)/bin/python3" \
  "$HOME"/.pyenv/versions/3.12*/bin/python3; do
  [ -n "$candidate" ] || continue
  if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [ -z "$python" ]; then
  echo "error: LeRobot 0.6.1 needs Python 3.12 and none was found; install it (pyenv install 3.12) or set LEROBOT_PYTHON" >&2
  exit 1
fi
echo "setting up the LeRobot venv $venv (first run: a few minutes, about 5 GB)..." >&2
log="$(mktemp -t runner-lerobot.XXXXXX)"
start=$SECONDS
{
  # A venv without its stamp is a build that did not finish: start it again.
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-deps -r "$reqs"
  "$venv/bin/python" -c 'import torch, lerobot; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  "$venv/bin/lerobot-train" --help >/dev/null
} >"$log" 2>&1 || {
  echo "error: building the LeRobot venv failed; the last lines of $log:" >&2
  grep -v "^WARNING: Location" "$log" | tail -n 15 >&2
  exit 1
}
echo "$hash" >"$stamp"
rm -f "$log"
echo "LeRobot venv ready in $((SECONDS - start)) s: $venv" >&2
echo "$venv"
