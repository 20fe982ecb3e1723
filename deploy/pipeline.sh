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
# override here reaches the builds.
set -euo pipefail

# shellcheck source=deploy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
load_config

substitutions=(
  "_REGION=$REGION"
  "_FUNCTION_NAME=$FUNCTION_NAME"
  "_RESULTS_BUCKET=$RESULTS_BUCKET"
  "_MEMORY=$MEMORY"
  "_CPU=$CPU"
  "_CONCURRENCY=$CONCURRENCY"
  "_MIN_INSTANCES=$MIN_INSTANCES"
  "_MAX_INSTANCES=$MAX_INSTANCES"
  "_FUNCTION_TIMEOUT_SECONDS=$FUNCTION_TIMEOUT_SECONDS"
  "_RUNTIME_SA_NAME=$RUNTIME_SA_NAME"
  "_BUILDER_SA_NAME=$BUILDER_SA_NAME"
  "_SECRET_NAME=$SECRET_NAME"
  "_MODEL_PROVIDER=$MODEL_PROVIDER"
  "_VERTEX_LOCATION=$VERTEX_LOCATION"
  "_ARTIFACT_REPOSITORY=$ARTIFACT_REPOSITORY"
  "_DEPLOY_IMAGE=$DEPLOY_IMAGE"
)
test_substitutions=(
  "_TEST_IMAGE=$TEST_IMAGE"
  "_EMULATOR_SDK_VERSION=$EMULATOR_SDK_VERSION"
)

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
submit() { # config, service account email, substitutions
  run gcloud builds submit . \
    --config="$1" \
    --ignore-file=deploy/build.gcloudignore \
    --region="$REGION" \
    --project="$PROJECT_ID" \
    --service-account="projects/$PROJECT_ID/serviceAccounts/$2" \
    --gcs-source-staging-dir="gs://$BUILD_SOURCE_BUCKET/source" \
    --substitutions="$3"
}

# gcloud builds submit waits for the build and fails when it fails: no deploy without tests.
submit cloudbuild-test.yaml "$TESTER_SA_EMAIL" "$(join_commas "${test_substitutions[@]}")"
submit cloudbuild.yaml "$DEPLOYER_SA_EMAIL" "$(join_commas "${substitutions[@]}")"
