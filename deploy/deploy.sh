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

[[ "$RUNTIME" =~ ^python3(11|12|13)$ ]] || die "RUNTIME=$RUNTIME: use a current Python runtime, python311 to python313"
[[ -n "$MEMORY" && -n "$CPU" ]] || die "set both MEMORY and CPU: gcloud accepts --cpu only together with --memory"
[[ "$MEMORY" =~ ^[0-9]+(Mi|Gi)$ ]] || die "MEMORY=$MEMORY: use a size like 512Mi or 1Gi"
[[ "$CPU" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "CPU=$CPU: use a number of vCPUs like 1 or 0.5"
# Whole vCPUs accept a memory range each (Cloud Run's CPU/memory table); fractions stay below 1.
memory_mib="${MEMORY%??}"
[[ "$MEMORY" != *Gi ]] || memory_mib=$((memory_mib * 1024))
case "$CPU" in
  1) memory_range=(512 4096) ;;
  2) memory_range=(512 8192) ;;
  4) memory_range=(2048 16384) ;;
  6) memory_range=(4096 24576) ;;
  8) memory_range=(4096 32768) ;;
  0.* | .*) memory_range=() ;;
  *) die "CPU=$CPU: use a fraction below 1, or a whole number of 1, 2, 4, 6 or 8 vCPUs" ;;
esac
if ((${#memory_range[@]})) && ((memory_mib < memory_range[0] || memory_mib > memory_range[1])); then
  die "MEMORY=$MEMORY is outside ${memory_range[0]}-${memory_range[1]} MiB, what $CPU vCPU accepts"
fi
if ! is_int "$CONCURRENCY" || ((CONCURRENCY < 1)); then die "CONCURRENCY must be a positive integer"; fi
if ((CONCURRENCY > 1)) && ! at_least "$CPU" 1; then
  die "CONCURRENCY=$CONCURRENCY needs CPU of at least 1 (the platform refuses concurrency above 1 on a fraction of a vCPU)"
fi
if ! is_int "$MIN_INSTANCES" || ! is_int "$MAX_INSTANCES"; then die "MIN_INSTANCES and MAX_INSTANCES must be integers"; fi
((MAX_INSTANCES >= 1 && MIN_INSTANCES <= MAX_INSTANCES)) || die "need 1 <= MAX_INSTANCES and MIN_INSTANCES <= MAX_INSTANCES"
if ! is_int "$FUNCTION_TIMEOUT_SECONDS" || ((FUNCTION_TIMEOUT_SECONDS < 1 || FUNCTION_TIMEOUT_SECONDS > 3600)); then
  die "FUNCTION_TIMEOUT_SECONDS must be 1-3600 (gen2 HTTP functions stop at 3600 s)"
fi
# The model: AGENT_MODEL, or the provider's default from config.env. The service would
# refuse to start with these (agent/base/settings.py); refuse them here, before the deploy.
if [[ "$MODEL_PROVIDER" == vertex ]]; then
  AGENT_MODEL="${AGENT_MODEL:-$VERTEX_DEFAULT_MODEL}"
  [[ -z "$MODEL_API" || "$MODEL_API" == chat_completions ]] || die "MODEL_PROVIDER=vertex speaks Chat Completions only: unset MODEL_API"
  [[ "$VERTEX_LOCATION" =~ ^[a-z][a-z0-9-]{1,62}$ ]] || die "VERTEX_LOCATION=$VERTEX_LOCATION is not a location: lower-case letters, digits and dashes"
else
  AGENT_MODEL="${AGENT_MODEL:-$OPENAI_DEFAULT_MODEL}"
fi

# The service reads these (agent/base/settings.py); the model key is not among them: it comes
# from Secret Manager only (with MODEL_PROVIDER=vertex there is none). THREADS sizes
# gunicorn's thread pool to the concurrency, and the service learns the platform timeout
# from the same variable that sets --timeout.
# AUTH_PLATFORM_VERIFIED: Google's front end verifies identity tokens and forwards them
# with the signature removed; AUTH_AUDIENCE: the service checks signed tokens against the
# function's own URLs, never against the request's Host.
env_vars=(
  "GOOGLE_CLOUD_PROJECT=$PROJECT_ID"
  "FIRESTORE_DATABASE=$FIRESTORE_DATABASE"
  "FUNCTION_TIMEOUT_SECONDS=$FUNCTION_TIMEOUT_SECONDS"
  "SESSION_TTL_SECONDS=$SESSION_TTL_SECONDS"
  "AGENT_MODEL=$AGENT_MODEL"
  "LOG_LEVEL=$LOG_LEVEL"
  "TRACE_EXPORT=$TRACE_EXPORT"
  "THREADS=$CONCURRENCY"
  "RESULTS_BUCKET=$RESULTS_BUCKET"
  "SIGNED_URL_TTL_SECONDS=$SIGNED_URL_TTL_SECONDS"
  "RESULT_INLINE_MAX_BYTES=$RESULT_INLINE_MAX_BYTES"
  "SIGNING_SERVICE_ACCOUNT=$RUNTIME_SA_EMAIL"
  "AUTH_PLATFORM_VERIFIED=true"
)
# Empty means "use the service's default"; leave those out rather than pass "".
[[ -z "$OPENAI_BASE_URL" ]] || env_vars+=("OPENAI_BASE_URL=$OPENAI_BASE_URL")
[[ -z "$AGENT_FACTORY" ]] || env_vars+=("AGENT_FACTORY=$AGENT_FACTORY")
[[ -z "$MODEL_API" ]] || env_vars+=("MODEL_API=$MODEL_API")
[[ "$MODEL_PROVIDER" != vertex ]] || env_vars+=("MODEL_PROVIDER=vertex" "VERTEX_LOCATION=$VERTEX_LOCATION")
# Background runs: the queue setup made, the invoker account its tasks carry a token of,
# and the URL they are delivered to (the function's own, also the token's audience). With
# webhooks on, the hosts they may name; their signing secret comes from Secret Manager.
[[ "$RUNS_QUEUE_NAME" =~ ^[A-Za-z0-9-]{1,100}$ ]] || die "RUNS_QUEUE_NAME=$RUNS_QUEUE_NAME: letters, digits and dashes"
runs_target="https://$REGION-$PROJECT_ID.cloudfunctions.net/$FUNCTION_NAME"
env_vars+=(
  "RUNS_QUEUE=projects/$PROJECT_ID/locations/$REGION/queues/$RUNS_QUEUE_NAME"
  "RUNS_INVOKER=$INVOKER_SA_EMAIL"
  "RUNS_TARGET_URL=$runs_target"
)
webhook_hosts="$(webhook_hosts)"
[[ -z "$webhook_hosts" ]] || env_vars+=("WEBHOOK_ALLOWED_HOSTS=$webhook_hosts")
join_env "${env_vars[@]}" >/dev/null # refuses a value it cannot carry, before any gcloud call

# The function's two URLs, the tokens' audiences (AUTH_AUDIENCE): the cloudfunctions.net
# form and Cloud Run's, which is built from the project number. Cloud Build passes
# PROJECT_NUMBER (a built-in substitution); by hand it is looked up.
if [[ -z "${PROJECT_NUMBER:-}" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    PROJECT_NUMBER=PROJECT_NUMBER
  else
    PROJECT_NUMBER="$(gcloud projects describe "$PROJECT_ID" --project="$PROJECT_ID" --format='value(projectNumber)')"
  fi
fi
[[ "$PROJECT_NUMBER" =~ ^[0-9]+$ || "$DRY_RUN" == 1 ]] || die "PROJECT_NUMBER '$PROJECT_NUMBER' is not a project number"
audiences="https://$REGION-$PROJECT_ID.cloudfunctions.net/$FUNCTION_NAME,https://$FUNCTION_NAME-$PROJECT_NUMBER.$REGION.run.app"

# The secret's version is pinned here: with ":latest", instances started after a new version
# was added would use it while the warm ones keep the old one. A new key takes effect with
# the next deploy, for every instance at once.
# Vertex AI needs no secret: --clear-secrets, since without a secrets flag gcloud keeps the
# ones of the function's current revision (a project that used a key before).
pinned() { # variable, secret: VARIABLE=secret:N, N its newest enabled version
  local version
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s=%s:LATEST_ENABLED_VERSION' "$1" "$2"
    return
  fi
  version="$(gcloud secrets versions list "$2" --filter=state=ENABLED \
    --sort-by=~createTime --limit=1 --format='value(name.basename())' --project="$PROJECT_ID")"
  [[ "$version" =~ ^[0-9]+$ ]] || die "secret $2 has no enabled version (deploy/setup.sh adds one)"
  printf '%s=%s:%s' "$1" "$2" "$version"
}
secrets=()
[[ "$MODEL_PROVIDER" == vertex ]] || secrets+=("$(pinned OPENAI_API_KEY "$SECRET_NAME")")
# The webhook signing secret only by reference, pinned like the key; never a literal.
[[ -z "$webhook_hosts" ]] || secrets+=("$(pinned WEBHOOK_SIGNING_SECRET "$WEBHOOK_SECRET_NAME")")
# --set-secrets replaces every secret of the current revision, so a dropped key goes too.
if ((${#secrets[@]})); then
  secrets_flag="--set-secrets=$(join_commas "${secrets[@]}")"
else
  secrets_flag="--clear-secrets"
fi

env_vars+=("AUTH_AUDIENCE=$audiences")
env_list="$(join_env "${env_vars[@]}")"

# The Cloud Run service behind the function, as the function names it
# (serviceConfig.service), not assumed to share its name; empty while the function does
# not exist. Any other failure to read it stops the deploy.
function_service() {
  local out err
  err="$(mktemp)"
  if out="$(gcloud functions describe "$FUNCTION_NAME" --region="$REGION" --project="$PROJECT_ID" \
    --format='value(serviceConfig.service.basename())' 2>"$err")"; then
    rm -f "$err"
    printf '%s' "$out"
  elif grep -q NOT_FOUND "$err"; then
    rm -f "$err"
  else
    cat "$err" >&2
    rm -f "$err"
    die "cannot read function $FUNCTION_NAME to check that it is private"
  fi
}

# Private means both: Cloud Run checks the invoker's IAM (the service does not carry
# run.googleapis.com/invoker-iam-disabled=true, set by --no-invoker-iam-check, which lets
# anyone call it with no binding at all), and no invoker binding for allUsers or
# allAuthenticatedUsers. Prints what is wrong and how to fix it; empty when private.
public_problems() { # service
  local disabled policy
  disabled="$(gcloud run services describe "$1" --region="$REGION" --project="$PROJECT_ID" \
    --format='value(metadata.annotations."run.googleapis.com/invoker-iam-disabled")')"
  policy="$(gcloud run services get-iam-policy "$1" --region="$REGION" --project="$PROJECT_ID" \
    --flatten='bindings[].members' --format='value(bindings.role,bindings.members)')"
  if [[ "$disabled" == true ]]; then
    printf '%s\n' "- Cloud Run's invoker IAM check is OFF on service $1: anyone can call it. Fix: gcloud run services update $1 --invoker-iam-check --region=$REGION --project=$PROJECT_ID"
  fi
  local member
  for member in allUsers allAuthenticatedUsers; do
    if grep -Eq $'\t'"$member\$" <<<"$policy"; then
      printf '%s\n' "- $member may invoke service $1. Fix: gcloud run services remove-iam-policy-binding $1 --member=$member --role=roles/run.invoker --region=$REGION --project=$PROJECT_ID"
    fi
  done
}

# Before: an existing function that is public would serve the new code publicly the moment
# traffic moves, so nothing is deployed until it is private again.
if [[ "$DRY_RUN" == 0 ]]; then
  service="$(function_service)"
  if [[ -n "$service" ]]; then
    problems="$(public_problems "$service")"
    [[ -z "$problems" ]] || die "function $FUNCTION_NAME is PUBLIC; nothing was deployed. Make it private, then run the deploy again:"$'\n'"$problems"
  fi
fi

cd "$REPO_ROOT"
# --serve-all-traffic-latest-revision: after a rollback pinned traffic to an old revision,
# the next deploy takes it back. .gcloudignore keeps tests, venvs and data out of --source.
# No --[no-]allow-unauthenticated: on an existing function gcloud would then set the Cloud
# Run service's IAM policy (run.services.setIamPolicy, which roles/cloudfunctions.developer
# lacks), failing every deploy after the first once the new revision already serves. A new
# function is private: under --quiet gcloud's "allow unauthenticated?" prompt takes its
# default, no. Checked before (above) and after (below).
run gcloud functions deploy "$FUNCTION_NAME" \
  --gen2 \
  --region="$REGION" \
  --project="$PROJECT_ID" \
  --runtime="$RUNTIME" \
  --source=. \
  --entry-point="$ENTRY_POINT" \
  --trigger-http \
  --service-account="$RUNTIME_SA_EMAIL" \
  --build-service-account="projects/$PROJECT_ID/serviceAccounts/$BUILDER_SA_EMAIL" \
  --docker-repository="projects/$PROJECT_ID/locations/$REGION/repositories/$ARTIFACT_REPOSITORY" \
  --memory="$MEMORY" \
  --cpu="$CPU" \
  --concurrency="$CONCURRENCY" \
  --min-instances="$MIN_INSTANCES" \
  --max-instances="$MAX_INSTANCES" \
  --timeout="${FUNCTION_TIMEOUT_SECONDS}s" \
  --set-env-vars="$env_list" \
  "$secrets_flag" \
  --serve-all-traffic-latest-revision \
  --quiet

# After: the deploy cannot make the function public (no flag asks for it, and the deployer
# cannot set IAM policies), but a change made meanwhile by someone else would now serve the
# new revision publicly: say so loudly, with the fix.
if [[ "$DRY_RUN" == 0 ]]; then
  service="$(function_service)"
  [[ -n "$service" ]] || die "function $FUNCTION_NAME was deployed but cannot be found to check that it is private"
  problems="$(public_problems "$service")"
  [[ -z "$problems" ]] || die "function $FUNCTION_NAME is PUBLIC and its new revision already serves. Fix it now (or roll back: deploy/README.md, Roll back):"$'\n'"$problems"
  log "function $FUNCTION_NAME is private: service $service checks the invoker's IAM and no public invoker binding"
fi
