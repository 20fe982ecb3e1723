#!/usr/bin/env bash
# Run the pipeline on this checkout's last commit: a test build, then a deploy build.
#
#   PROJECT_ID=my-project deploy/pipeline.sh [--dry-run]
#
# Two builds, two identities, one commit:
# 1. cloudbuild-test.yaml runs the suite as the tester account, which holds no role that
#    changes anything: the dozens of third-party packages the tests install run there.
# 2. Only if that passes, cloudbuild.yaml deploys as the deployer account. No package code
#    runs in that build (Google's gcloud image only), and its workspace is a fresh upload
#    of the same commit, not the test build's workspace, which the tests could have changed.
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
  MODEL_PROVIDER VERTEX_LOCATION OPENAI_DEFAULT_MODEL VERTEX_DEFAULT_MODEL AGENT_MODEL
  OPENAI_BASE_URL MODEL_API RUNTIME_SA_NAME BUILDER_SA_NAME SECRET_NAME SESSION_TTL_SECONDS
  LOG_LEVEL TRACE_EXPORT SIGNED_URL_TTL_SECONDS RESULT_INLINE_MAX_BYTES DEPLOY_IMAGE
  RUNS_QUEUE_NAME INVOKER_SA_NAME WEBHOOK_ALLOWED_HOSTS WEBHOOK_SECRET_NAME
)
# The test build (cloudbuild-test.yaml's substitutions).
test_knobs=(TEST_IMAGE EMULATOR_SDK_VERSION)
# Read by this script itself: where the source is staged, and who each build runs as.
pipeline_knobs=(BUILD_SOURCE_BUCKET DEPLOYER_SA_NAME TESTER_SA_NAME)
# Read by setup.sh only: they shape what setup creates (where the database lives, how long
# objects are kept, the custom roles' ids) and nothing a deploy does. Accepted here so that
# one exported environment serves both scripts.
setup_knobs=(
  FIRESTORE_LOCATION RESULTS_RETENTION_DAYS BUILD_SOURCE_RETENTION_DAYS SIGNER_ROLE_ID DEPLOY_ROLE_ID
  ARTIFACT_RETENTION_DAYS ARTIFACT_KEEP_VERSIONS
  RUNS_QUEUE_MAX_ATTEMPTS RUNS_QUEUE_MIN_BACKOFF RUNS_QUEUE_MAX_BACKOFF RUNS_QUEUE_MAX_DOUBLINGS
  RUNS_QUEUE_MAX_RETRY_DURATION RUNS_QUEUE_MAX_DISPATCHES_PER_SECOND RUNS_QUEUE_MAX_CONCURRENT_DISPATCHES
)

known=" ${deploy_knobs[*]} ${test_knobs[*]} ${pipeline_knobs[*]} ${setup_knobs[*]} "
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
test_substitutions="$(substitutions_of "${test_knobs[@]}")"

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

submit() { # config, service account email, substitutions
  local args=(gcloud beta builds submit .
    --config="$1"
    --ignore-file=deploy/build.gcloudignore
    --region="$REGION"
    --project="$PROJECT_ID"
    --service-account="projects/$PROJECT_ID/serviceAccounts/$2"
    --gcs-source-staging-dir="gs://$BUILD_SOURCE_BUCKET/source"
    --substitutions="$3"
    --async)
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${args[@]}"
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
}

# The deploy build is submitted only after the test build passed: no deploy without tests.
submit cloudbuild-test.yaml "$TESTER_SA_EMAIL" "$test_substitutions"
submit cloudbuild.yaml "$DEPLOYER_SA_EMAIL" "$deploy_substitutions"
# The deployer may not set IAM policies; the operator running this lets the queue's invoker
# account call the function (a no-op once it may; after the first deploy, the new service).
grant_invoker
