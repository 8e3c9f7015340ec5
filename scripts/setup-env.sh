#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv, or $RUNNER_VENV).
#   scripts/setup-env.sh train   control side + training side (torch, accelerate, wandb)
#   scripts/setup-env.sh dev     the above + test and lint tools
# Re-runs are instant while pyproject.toml is unchanged. torch is pinned here,
# not in pyproject.toml: $RUNNER_TORCH (default torch==2.13.0) picks the build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-train}"
case "$extras" in
  train) spec="[train]" ;;
  dev) spec="[train,dev]" ;;
  *) echo "error: setup-env.sh takes 'train' or 'dev', got '$extras'" >&2; exit 2 ;;
esac
venv="${RUNNER_VENV:-$root/.venv}"
torch="${RUNNER_TORCH:-torch==2.13.0}"
python="${PYTHON:-python3}"
stamp="$venv/.runner-setup-$extras"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16) $torch"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: runner needs Python >= 3.10 ('$python' is older or missing); set PYTHON=python3.11" >&2
  exit 1
fi
echo "setting up $venv ($extras; first run takes a few minutes)..." >&2
log="$(mktemp -t runner-setup.XXXXXX)"
{
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$torch"
  "$venv/bin/python" -m pip install -q -e "$root$spec"
} >"$log" 2>&1 || {
  echo "error: setting up $venv failed; the last lines of $log:" >&2
  grep -v "^WARNING: Location" "$log" | tail -n 15 >&2
  exit 1
}
rm -f "$log" "$venv"/.runner-setup-*
echo "$want" >"$stamp"
# A dev install satisfies a train one as well.
[ "$extras" = dev ] && echo "$want" >"$venv/.runner-setup-train"
echo "ready: $venv" >&2
