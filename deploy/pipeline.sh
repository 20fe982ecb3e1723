#!/usr/bin/env bash
# Run the pipeline on this checkout's last commit: tests, staging, the eval gate, production.
#
#   PROJECT_ID=my-project deploy/pipeline.sh [--dry-run]
#
# Each step runs only if the one before passed; one commit throughout:
# 1. cloudbuild-test.yaml runs the suite as the tester account, which holds no role that
#    changes anything: the dozens of third-party packages the tests install run there.
# 2. cloudbuild.yaml deploys to the staging function (STAGING_* names: its own function,
#    database, results bucket and runtime account) as the deployer account. No package code
#    runs in that build (Google's gcloud image only), and its workspace is a fresh upload
#    of the commit, not the test build's workspace, which the tests could have changed.
# 3. The eval gate: evals/ (this commit's cases) run here against the staging function with
#    its real model, with your identity token; a failed gate prints the failed cases and why,
#    and stops the pipeline. The reports go to .local/eval/ (EVAL_REPORT_DIR).
# 4. cloudbuild.yaml deploys to production from the same upload as staging (the staged
#    object, copied by Cloud Storage), with the production names.
# What is uploaded is the commit (git archive HEAD), never uncommitted changes.
# Values from deploy/config.env and the environment are passed as substitutions, so an
# override here reaches the builds; every knob is accounted for below, or refused.
set -euo pipefail

# shellcheck source=deploy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
load_config

# Every knob of deploy/config.env, by where it takes effect. A knob in none of these lists
# is refused below, before anything is submitted, so that no override is dropped silently
# (tests/test_deploy_pipeline_knobs.py walks config.env the same way).
# The deploy build: each becomes a substitution of cloudbuild.yaml, and its deploy step's
# environment, where deploy/deploy.sh reads it (DEPLOY_IMAGE names the step's image).
deploy_knobs=(
  REGION FUNCTION_NAME RUNTIME ENTRY_POINT MEMORY CPU CONCURRENCY MIN_INSTANCES MAX_INSTANCES
  FUNCTION_TIMEOUT_SECONDS FIRESTORE_DATABASE RESULTS_BUCKET ARTIFACT_REPOSITORY
  MODEL_PROVIDER VERTEX_LOCATION OPENAI_DEFAULT_MODEL VERTEX_DEFAULT_MODEL AGENT_MODEL AGENT_FACTORY
  OPENAI_BASE_URL MODEL_API RUNTIME_SA_NAME BUILDER_SA_NAME SECRET_NAME SESSION_TTL_SECONDS
  LOG_LEVEL TRACE_EXPORT SIGNED_URL_TTL_SECONDS RESULT_INLINE_MAX_BYTES DEPLOY_IMAGE
  RUNS_QUEUE_NAME INVOKER_SA_NAME WEBHOOK_ALLOWED_HOSTS WEBHOOK_SECRET_NAME
)
# The test build (cloudbuild-test.yaml's substitutions).
test_knobs=(TEST_IMAGE EMULATOR_SDK_VERSION)
# The staging deploy build: each replaces its production knob in that build's substitutions
# (common.sh, use_staging); setup.sh --staging reads them too.
staging_knobs=(
  STAGING_FUNCTION_NAME STAGING_FIRESTORE_DATABASE STAGING_RESULTS_BUCKET STAGING_RUNTIME_SA_NAME
  STAGING_MIN_INSTANCES STAGING_RUNS_QUEUE_NAME STAGING_INVOKER_SA_NAME
)
# Read by this script itself: where the source is staged, who each build runs as, the gate.
pipeline_knobs=(BUILD_SOURCE_BUCKET DEPLOYER_SA_NAME TESTER_SA_NAME EVAL_MIN_PASS_RATE)
# Read by setup.sh only: they shape what setup creates (where the database lives, how long
# objects are kept, the custom roles' ids) and nothing a deploy does. Accepted here so that
# one exported environment serves both scripts.
setup_knobs=(
  FIRESTORE_LOCATION RESULTS_RETENTION_DAYS BUILD_SOURCE_RETENTION_DAYS SIGNER_ROLE_ID DEPLOY_ROLE_ID
  ARTIFACT_RETENTION_DAYS ARTIFACT_KEEP_VERSIONS
  RUNS_QUEUE_MAX_ATTEMPTS RUNS_QUEUE_MIN_BACKOFF RUNS_QUEUE_MAX_BACKOFF RUNS_QUEUE_MAX_DOUBLINGS
  RUNS_QUEUE_MAX_RETRY_DURATION RUNS_QUEUE_MAX_DISPATCHES_PER_SECOND RUNS_QUEUE_MAX_CONCURRENT_DISPATCHES
)

known=" ${deploy_knobs[*]} ${test_knobs[*]} ${staging_knobs[*]} ${pipeline_knobs[*]} ${setup_knobs[*]} "
while IFS= read -r knob; do
  [[ "$known" == *" $knob "* ]] || die "deploy/config.env sets $knob, which deploy/pipeline.sh does not carry to the builds: add it to one of the lists in pipeline.sh (and to cloudbuild.yaml if the deploy reads it)"
done < <(sed -nE 's/^([A-Z][A-Z0-9_]*)=.*/\1/p' "$DEPLOY_DIR/config.env")

substitutions_of() { # knob names -> "_NAME=value,..." (a value holding a comma is refused)
  local knob items=()
  for knob in "$@"; do
    items+=("_$knob=${!knob}")
  done
  join_commas "${items[@]}"
}
deploy_substitutions="$(substitutions_of "${deploy_knobs[@]}")"
staging_substitutions="$(use_staging && substitutions_of "${deploy_knobs[@]}")"
test_substitutions="$(substitutions_of "${test_knobs[@]}")"
[[ "$EVAL_MIN_PASS_RATE" =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || die "EVAL_MIN_PASS_RATE=$EVAL_MIN_PASS_RATE: use a share between 0 and 1, e.g. 0.8"

git -C "$REPO_ROOT" rev-parse --verify -q HEAD >/dev/null || die "$REPO_ROOT is not a git checkout with a commit"
commit="$(git -C "$REPO_ROOT" rev-parse HEAD)"
[[ -z "$(git -C "$REPO_ROOT" status --porcelain)" ]] || log "uncommitted changes are NOT shipped: the builds get commit $commit"
source_dir="$(mktemp -d)"
trap 'rm -rf "$source_dir"' EXIT
git -C "$REPO_ROOT" archive --format=tar "$commit" | tar -x -C "$source_dir"
log "commit $commit"
cd "$source_dir"

# Both uploads keep the tests and tooling and drop local state (deploy/build.gcloudignore);
# each build gets its own copy in the staging bucket.
# The builds log to Cloud Logging only (they run as user-specified accounts), which GA
# `gcloud builds submit` does not stream: a failing test build would show nothing. So each
# build is submitted without waiting, its log is streamed from Cloud Logging with the beta
# command (gcloud 528: surface/builds/log.py, LogBeta, _support_gcl = True), and its outcome
# is read afterwards: on failure the build's status, its failing step and its log URL.
build_field() { # build id, format (and more flags)
  local id="$1"
  shift
  gcloud builds describe "$id" --region="$REGION" --project="$PROJECT_ID" "$@"
}

submit() { # config, service account email, substitutions[, source: the directory, or a staged upload]
  local source="${4:-.}" ignore=(--ignore-file=deploy/build.gcloudignore)
  [[ "$source" == . ]] || ignore=()
  local args=(gcloud beta builds submit "$source"
    --config="$1"
    "${ignore[@]}"
    --region="$REGION"
    --project="$PROJECT_ID"
    --service-account="projects/$PROJECT_ID/serviceAccounts/$2"
    --gcs-source-staging-dir="gs://$BUILD_SOURCE_BUCKET/source"
    --substitutions="$3"
    --async)
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${args[@]}"
    build_id="<build>"
    return
  fi
  local id url status failing
  id="$("${args[@]}" --format='value(id)')"
  [[ -n "$id" ]] || die "$1: the build was not created"
  url="$(build_field "$id" --format='value(logUrl)')"
  log "$1: build $id, log at $url"
  gcloud beta builds log "$id" --stream --region="$REGION" --project="$PROJECT_ID" ||
    log "$1: cannot stream the log of build $id; waiting for it to end"
  status="$(build_field "$id" --format='value(status)')"
  while [[ "$status" =~ ^(PENDING|QUEUED|WORKING)$ ]]; do
    sleep "$RETRY_DELAY_SECONDS"
    status="$(build_field "$id" --format='value(status)')"
  done
  if [[ "$status" != SUCCESS ]]; then
    failing="$(build_field "$id" --flatten=steps --format='value(steps.id,steps.status)' |
      awk -F '\t' '$2 != "SUCCESS" && $2 != "" { printf "%s%s (%s)", sep, $1, $2; sep = ", " }')"
    die "$1: build $id ended $status; failing step: ${failing:-none recorded}; log: $url"
  fi
  log "$1: build $id passed"
  build_id="$id"
}

# The gate: this commit's eval cases against the staging function, as a client of its HTTP
# API with the operator's identity token (passed in the environment, never in an argument).
# Python 3.11+ with jsonschema: the checkout's .venv (make eval or make run makes it), or
# PYTHON. Exit 1 is a failed gate; anything else is a gate that could not run: both stop.
eval_gate() {
  local url python="${PYTHON:-}" token code=0
  local reports="${EVAL_REPORT_DIR:-$REPO_ROOT/.local/eval}"
  [[ -n "$python" ]] || { [[ -x "$REPO_ROOT/.venv/bin/python" ]] && python="$REPO_ROOT/.venv/bin/python"; } || python=python3
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$python" -m evals --url="<the staging function's URL>" --min-pass-rate="$EVAL_MIN_PASS_RATE"
    printf '\n'
    return
  fi
  url="$(gcloud functions describe "$STAGING_FUNCTION_NAME" --gen2 --region="$REGION" \
    --project="$PROJECT_ID" --format='value(serviceConfig.uri)')" || die "cannot read the staging function's URL"
  [[ -n "$url" ]] || die "the staging function $STAGING_FUNCTION_NAME has no URL"
  token="$(gcloud auth print-identity-token --project="$PROJECT_ID")" || die "cannot get an identity token to call staging (gcloud auth login)"
  log "eval gate: evals/ against staging $url (minimum pass rate $EVAL_MIN_PASS_RATE)"
  EVAL_ID_TOKEN="$token" EVAL_REPORT_DIR="$reports" "$python" -m evals --url="$url" \
    --min-pass-rate="$EVAL_MIN_PASS_RATE" || code=$?
  [[ "$code" == 0 ]] ||
    die "eval gate on staging: $( ((code == 1)) && echo "FAILED (the cases above)" || echo "could not run (exit $code)"); production is NOT deployed. Reports: $reports"
  log "eval gate passed on staging"
}

staged_upload() { # build id -> gs:// URL of the source object the build ran on
  [[ "$DRY_RUN" == 0 ]] || { printf 'gs://%s/source/<the staging build'"'"'s upload>' "$BUILD_SOURCE_BUCKET"; return; }
  local object
  object="$(build_field "$1" --format='value(source.storageSource.object)')"
  [[ -n "$object" ]] || die "cannot read the upload of build $1"
  printf 'gs://%s/%s' "$BUILD_SOURCE_BUCKET" "$object"
}

# Each step only after the one before passed: no deploy without tests, no production
# without a passed gate on staging; production gets staging's very upload.
submit cloudbuild-test.yaml "$TESTER_SA_EMAIL" "$test_substitutions"
log "staging: $STAGING_FUNCTION_NAME"
submit cloudbuild.yaml "$DEPLOYER_SA_EMAIL" "$staging_substitutions"
# The deployer may not set IAM policies; the operator running this lets each function's
# queue invoker account call it (a no-op once it may; after a first deploy, the new service).
(use_staging && account_emails && grant_invoker)
upload="$(staged_upload "$build_id")"
eval_gate
log "production: $FUNCTION_NAME, from $upload"
submit cloudbuild.yaml "$DEPLOYER_SA_EMAIL" "$deploy_substitutions" "$upload"
grant_invoker
