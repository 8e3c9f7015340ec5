#!/usr/bin/env bash
# ./test.sh [pytest args]: set up .venv (dev), start the real components the
# end-to-end tests use (Docker engine, Debian+sshd image; as root), and run the
# whole test suite, slow tests included. `./test.sh -m "not slow"` for the fast ones.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup-env.sh" dev
"$root/scripts/ci-infra.sh"
venv="${RUNNER_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m pytest --slow "$@"
