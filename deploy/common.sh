# Shared by the deploy scripts: arguments, configuration, dry-run printing, retries.
# shellcheck shell=bash

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
RETRY_ATTEMPTS="${RETRY_ATTEMPTS:-6}"
RETRY_DELAY_SECONDS="${RETRY_DELAY_SECONDS:-5}"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
log() { printf '==> %s\n' "$*" >&2; }

parse_args() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      --staging) STAGING=1 ;;
      -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument: $arg (try --help)" ;;
    esac
  done
}

load_config() {
  # No default project: deploying into whatever gcloud happens to point at is how
  # production gets overwritten by accident.
  [[ -n "${PROJECT_ID:-}" ]] || die "set PROJECT_ID (e.g. export PROJECT_ID=\$(gcloud config get-value project))"
  # Bucket and service account names are built from it; refuse anything they cannot hold.
  [[ "$PROJECT_ID" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "PROJECT_ID '$PROJECT_ID' is not a plain project id"
  # shellcheck source=deploy/config.env
  source "$DEPLOY_DIR/config.env"
  case "$MODEL_PROVIDER" in
    openai | vertex) ;;
    *) die "MODEL_PROVIDER=$MODEL_PROVIDER: use openai (OpenAI, key in Secret Manager) or vertex (Gemini on Vertex AI, no key)" ;;
  esac
  [[ "${STAGING:-0}" != 1 ]] || use_staging
  account_emails
}

# The accounts' emails, from their names (again after use_staging swaps them).
account_emails() {
  # shellcheck disable=SC2034  # used by the scripts that source this file
  RUNTIME_SA_EMAIL="$RUNTIME_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  DEPLOYER_SA_EMAIL="$DEPLOYER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  BUILDER_SA_EMAIL="$BUILDER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  TESTER_SA_EMAIL="$TESTER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  INVOKER_SA_EMAIL="$INVOKER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
}

# WEBHOOK_ALLOWED_HOSTS as the service reads it (comma-separated); config.env separates
# them with spaces. A name the service would refuse at startup is refused here.
webhook_hosts() {
  local host items out=()
  read -ra items <<<"${WEBHOOK_ALLOWED_HOSTS//,/ }"
  for host in "${items[@]}"; do
    [[ "$host" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "WEBHOOK_ALLOWED_HOSTS: '$host' is not a bare host name"
    out+=("$host")
  done
  local IFS=,
  printf '%s' "${out[*]}"
}

# The queue's tasks reach the function as the invoker account, which needs roles/run.invoker
# on the Cloud Run service behind the function (serviceConfig.service); that service exists
# only once the function was deployed. setup.sh grants it when the function exists, and the
# pipeline (run by the operator, who may set IAM policies) right after each deploy, so the
# first deploy needs no second setup run. Nothing to do while there is no function.
grant_invoker() {
  local out err service current member="serviceAccount:$INVOKER_SA_EMAIL"
  if [[ "$DRY_RUN" == 1 ]]; then
    return
  fi
  err="$(mktemp)"
  if ! out="$(gcloud functions describe "$FUNCTION_NAME" --region="$REGION" --project="$PROJECT_ID" \
    --format='value(serviceConfig.service.basename())' 2>"$err")"; then
    grep -q NOT_FOUND "$err" || { cat "$err" >&2; rm -f "$err"; die "cannot read function $FUNCTION_NAME to let the queue invoke it"; }
    rm -f "$err"
    log "function $FUNCTION_NAME does not exist yet: the pipeline lets $INVOKER_SA_EMAIL invoke it after its first deploy"
    return
  fi
  rm -f "$err"
  service="$out"
  current="$(gcloud run services get-iam-policy "$service" --region="$REGION" --project="$PROJECT_ID" \
    --flatten='bindings[].members' --format='value(bindings.role,bindings.members)')"
  grep -Fxq "roles/run.invoker"$'\t'"$member" <<<"$current" && return
  log "letting $INVOKER_SA_EMAIL invoke service $service (the background-run queue's tasks)"
  retry gcloud run services add-iam-policy-binding "$service" --region="$REGION" --member="$member" \
    --role=roles/run.invoker --project="$PROJECT_ID" --format=none --quiet
}

# The staging function (--staging; the pipeline's evals run against it): the production
# names swapped for its own, so that it shares nothing mutable with production: its own
# function, Firestore database (histories, keys, tool runs, the budget's spend), results
# bucket, runtime account (whose Firestore grant names that database only), and background
# runs' queue and invoker account (so its tasks can never call production).
# `setup.sh --staging` creates them, `deploy.sh --staging` deploys there by hand.
# shellcheck disable=SC2034  # read by the scripts that source this file
use_staging() {
  FUNCTION_NAME="$STAGING_FUNCTION_NAME"
  FIRESTORE_DATABASE="$STAGING_FIRESTORE_DATABASE"
  RESULTS_BUCKET="$STAGING_RESULTS_BUCKET"
  RUNTIME_SA_NAME="$STAGING_RUNTIME_SA_NAME"
  MIN_INSTANCES="$STAGING_MIN_INSTANCES"
  RUNS_QUEUE_NAME="$STAGING_RUNS_QUEUE_NAME"
  INVOKER_SA_NAME="$STAGING_INVOKER_SA_NAME"
}

# Commands that change something go through run: printed shell-quoted with --dry-run,
# executed otherwise. Read-only checks call gcloud directly and are skipped in a dry run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    printf '\n'
  else
    "$@"
  fi
}

# IAM is eventually consistent: a service account created seconds ago can still be
# unknown to the next binding call, so those calls retry with a growing pause.
retry() {
  local attempt=1
  until "$@"; do
    ((attempt < RETRY_ATTEMPTS)) || return 1
    log "retrying in $((attempt * RETRY_DELAY_SECONDS)) s: $*"
    sleep "$((attempt * RETRY_DELAY_SECONDS))"
    attempt=$((attempt + 1))
  done
}

# gcloud list and dict flags split on commas; a value holding one would be cut in two.
join_commas() {
  local item out=""
  for item in "$@"; do
    [[ "$item" != *,* ]] || die "value must not contain a comma: $item"
    out+="${out:+,}$item"
  done
  printf '%s' "$out"
}

# --set-env-vars with values that hold commas (AUTH_AUDIENCE lists URLs): gcloud's
# alternate-delimiter syntax, "^;^A=1;B=x,y" (gcloud topic escaping).
join_env() {
  local item out=""
  for item in "$@"; do
    [[ "$item" != *";"* ]] || die "value must not contain a semicolon: $item"
    out+="${out:+;}$item"
  done
  printf '^;^%s' "$out"
}
