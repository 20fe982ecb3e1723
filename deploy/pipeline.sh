#!/usr/bin/env bash
# Run the Cloud Build pipeline (cloudbuild.yaml: tests, then deploy) on this checkout:
#
#   PROJECT_ID=my-project deploy/pipeline.sh [--dry-run]
#
# The build runs as the deployer service account that deploy/setup.sh created, not as the
# project's default build account. Values from deploy/config.env and the environment are
# passed as substitutions, so an override here reaches the deploy step.
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
)

substitution_list="$(join_commas "${substitutions[@]}")"

cd "$REPO_ROOT"
# The build needs the tests, which .gcloudignore keeps out of the function's upload, so the
# pipeline's upload uses its own ignore file.
run gcloud builds submit . \
  --config=cloudbuild.yaml \
  --ignore-file=deploy/build.gcloudignore \
  --region="$REGION" \
  --project="$PROJECT_ID" \
  --service-account="projects/$PROJECT_ID/serviceAccounts/$DEPLOYER_SA_EMAIL" \
  --gcs-source-staging-dir="gs://$BUILD_SOURCE_BUCKET/source" \
  --substitutions="$substitution_list"
