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
  # shellcheck disable=SC2034  # used by the scripts that source this file
  RUNTIME_SA_EMAIL="$RUNTIME_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  DEPLOYER_SA_EMAIL="$DEPLOYER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  BUILDER_SA_EMAIL="$BUILDER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
  # shellcheck disable=SC2034
  TESTER_SA_EMAIL="$TESTER_SA_NAME@$PROJECT_ID.iam.gserviceaccount.com"
}

# The staging function (--staging; the pipeline's evals run against it): the production
# names swapped for its own, so that it shares nothing mutable with production: its own
# function, Firestore database (histories, keys, tool runs, the budget's spend), results
# bucket and runtime account (whose Firestore grant names that database only).
# `setup.sh --staging` creates them, `deploy.sh --staging` deploys there by hand.
# shellcheck disable=SC2034  # read by the scripts that source this file
use_staging() {
  FUNCTION_NAME="$STAGING_FUNCTION_NAME"
  FIRESTORE_DATABASE="$STAGING_FIRESTORE_DATABASE"
  RESULTS_BUCKET="$STAGING_RESULTS_BUCKET"
  RUNTIME_SA_NAME="$STAGING_RUNTIME_SA_NAME"
  MIN_INSTANCES="$STAGING_MIN_INSTANCES"
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
