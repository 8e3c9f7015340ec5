#!/usr/bin/env bash
# ./train.sh JOB [key=value ...] [--device auto|cpu|cuda] [--data PATH] [--run-dir DIR]
# Runs JOB on this machine: sets up .venv on first use, picks the best free GPU
# (else the CPU), synthesises a small dataset when none is configured, and
# resumes from the newest complete checkpoint in runs/JOB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup-env.sh" train
venv="${RUNNER_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/runner" train "$@"
