#!/usr/bin/env bash
# The jobs' environment as lerobot-train flags (pi0_so101: overrides style env):
#   DATASET (repo id), STEPS, BATCH_SIZE, JOB_NAME, REPO_ID (push target), RESUME=true,
#   POLICY_PATH (default lerobot/pi0_base), VIDEO_BACKEND (default pyav), SAVE_FREQ.
# Extra arguments are passed through. HF_TOKEN / WANDB_API_KEY come from the environment.
set -euo pipefail
: "${DATASET:?DATASET (a Hub dataset repo id) is required}"
job="${JOB_NAME:-${LEROBOT_POLICY:-lerobot}_run}"
out="outputs/train/${job}"
args=(
  "--dataset.repo_id=${DATASET}"
  "--dataset.video_backend=${VIDEO_BACKEND:-pyav}"
  "--output_dir=${out}"
  "--job_name=${job}"
  "--steps=${STEPS:-20000}"
  "--batch_size=${BATCH_SIZE:-32}"
  "--save_freq=${SAVE_FREQ:-5000}"
  "--wandb.enable=$([ -n "${WANDB_API_KEY:-}" ] && echo true || echo false)"
)
case "${LEROBOT_POLICY:-}" in
  pi0) args+=("--policy.path=${POLICY_PATH:-lerobot/pi0_base}" "--policy.dtype=bfloat16"
              "--policy.gradient_checkpointing=true") ;;
  "") ;;
  *) args+=("--policy.type=${LEROBOT_POLICY}") ;;
esac
if [ -n "${REPO_ID:-}" ]; then
  args+=("--policy.repo_id=${REPO_ID}" "--policy.push_to_hub=${PUSH_TO_HUB:-false}")
fi
if [ "${RESUME:-false}" = true ] && [ -f "${out}/checkpoints/last/pretrained_model/train_config.json" ]; then
  # lerobot resumes from the config it saved; the other flags are in it.
  args=("--config_path=${out}/checkpoints/last/pretrained_model/train_config.json" "--resume=true")
fi
exec lerobot-train "${args[@]}" "$@"
