#!/usr/bin/env bash
# ./test.sh [pytest args]: set up .venv (dev) and run the whole test suite,
# the slow end-to-end tests included. `./test.sh -m "not slow"` for the fast ones.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup-env.sh" dev
venv="${RUNNER_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m pytest --slow "$@"
