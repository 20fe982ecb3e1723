#!/usr/bin/env bash
# Deploy the agent function (Cloud Functions gen2). The pipeline's last step runs this;
# it also runs by hand from a checkout, after deploy/setup.sh:
#
#   PROJECT_ID=my-project deploy/deploy.sh [--dry-run]
#
# Sizing, names and settings come from deploy/config.env, each overridable from the
# environment. Inconsistent sizing is refused here, before gcloud is called.
set -euo pipefail

# shellcheck source=deploy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
load_config

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }

[[ "$RUNTIME" =~ ^python3(11|12|13)$ ]] || die "RUNTIME=$RUNTIME: use python311, python312 or python313"
[[ -n "$MEMORY" && -n "$CPU" ]] || die "set both MEMORY and CPU: gcloud accepts --cpu only together with --memory"
[[ "$MEMORY" =~ ^[0-9]+(Mi|Gi)$ ]] || die "MEMORY=$MEMORY: use a size like 512Mi or 1Gi"
[[ "$CPU" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "CPU=$CPU: use a number of vCPUs like 1 or 0.5"
is_int "$CONCURRENCY" && ((CONCURRENCY >= 1)) || die "CONCURRENCY must be a positive integer"
if ((CONCURRENCY > 1)) && ! at_least "$CPU" 1; then
  die "CONCURRENCY=$CONCURRENCY needs CPU of at least 1 (the platform refuses concurrency above 1 on a fraction of a vCPU)"
fi
is_int "$MIN_INSTANCES" && is_int "$MAX_INSTANCES" || die "MIN_INSTANCES and MAX_INSTANCES must be integers"
((MAX_INSTANCES >= 1 && MIN_INSTANCES <= MAX_INSTANCES)) || die "need 1 <= MAX_INSTANCES and MIN_INSTANCES <= MAX_INSTANCES"
is_int "$FUNCTION_TIMEOUT_SECONDS" && ((FUNCTION_TIMEOUT_SECONDS >= 1 && FUNCTION_TIMEOUT_SECONDS <= 3600)) ||
  die "FUNCTION_TIMEOUT_SECONDS must be 1-3600 (gen2 HTTP functions stop at 3600 s)"

# The service reads these (agent/settings.py); the model key is not among them: it comes
# from Secret Manager only. THREADS sizes gunicorn's thread pool to the concurrency, and the
# service learns the platform timeout from the same variable that sets --timeout.
env_vars=(
  "GOOGLE_CLOUD_PROJECT=$PROJECT_ID"
  "FIRESTORE_DATABASE=$FIRESTORE_DATABASE"
  "FUNCTION_TIMEOUT_SECONDS=$FUNCTION_TIMEOUT_SECONDS"
  "SESSION_TTL_SECONDS=$SESSION_TTL_SECONDS"
  "AGENT_MODEL=$AGENT_MODEL"
  "LOG_LEVEL=$LOG_LEVEL"
  "THREADS=$CONCURRENCY"
  "RESULTS_BUCKET=$RESULTS_BUCKET"
  "SIGNED_URL_TTL_SECONDS=$SIGNED_URL_TTL_SECONDS"
  "RESULT_INLINE_MAX_BYTES=$RESULT_INLINE_MAX_BYTES"
  "SIGNING_SERVICE_ACCOUNT=$RUNTIME_SA_EMAIL"
)
# Empty means "use the service's default"; leave those out rather than pass "".
[[ -z "$OPENAI_BASE_URL" ]] || env_vars+=("OPENAI_BASE_URL=$OPENAI_BASE_URL")
[[ -z "$MODEL_API" ]] || env_vars+=("MODEL_API=$MODEL_API")

cd "$REPO_ROOT"
# --serve-all-traffic-latest-revision: after a rollback pinned traffic to an old revision,
# the next deploy takes it back. .gcloudignore keeps tests, venvs and data out of --source.
run gcloud functions deploy "$FUNCTION_NAME" \
  --gen2 \
  --region="$REGION" \
  --project="$PROJECT_ID" \
  --runtime="$RUNTIME" \
  --source=. \
  --entry-point="$ENTRY_POINT" \
  --trigger-http \
  --no-allow-unauthenticated \
  --service-account="$RUNTIME_SA_EMAIL" \
  --build-service-account="projects/$PROJECT_ID/serviceAccounts/$BUILDER_SA_EMAIL" \
  --memory="$MEMORY" \
  --cpu="$CPU" \
  --concurrency="$CONCURRENCY" \
  --min-instances="$MIN_INSTANCES" \
  --max-instances="$MAX_INSTANCES" \
  --timeout="${FUNCTION_TIMEOUT_SECONDS}s" \
  --set-env-vars="$(join_commas "${env_vars[@]}")" \
  --set-secrets="OPENAI_API_KEY=$SECRET_NAME:latest" \
  --serve-all-traffic-latest-revision \
  --quiet
