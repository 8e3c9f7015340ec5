#!/usr/bin/env bash
# ./test.sh [pytest args]: set up .venv (dev), start the real components the
# end-to-end tests use (Docker engine, Debian+sshd image; as root), build the LeRobot
# venv the real-trainer tests use, and run the whole test suite, slow tests included.
# `./test.sh -m "not slow"` for the fast ones.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup-env.sh" dev
"$root/scripts/ci-infra.sh"
# The real lerobot-train the LeRobot tests run: a Python 3.12 venv cached by the hash of
# images/lerobot/requirements.txt (minutes the first time on a machine, then instant).
if ! "$root/scripts/setup-lerobot-env.sh" >/dev/null; then
  echo "test.sh: no LeRobot venv; its tests will skip (or fail under CI)" >&2
fi
venv="${RUNNER_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m pytest --slow "$@"
