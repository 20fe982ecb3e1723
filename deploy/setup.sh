#!/usr/bin/env bash
# One-time project setup for the agent function; safe to run again. Each step looks at
# what exists and creates only what is missing, so a second run changes nothing.
#
#   PROJECT_ID=my-project deploy/setup.sh [--dry-run] < model-api-key-file
#   PROJECT_ID=my-project MODEL_PROVIDER=vertex deploy/setup.sh [--dry-run]
#
# The model API key is read from standard input (or prompted for, without echo, on a
# terminal) and streamed to Secret Manager; it never appears in a command line or a log.
# It is only asked for while the secret has no version yet. With MODEL_PROVIDER=vertex there
# is no key: the runtime account calls Gemini on Vertex AI with its own access token, so
# setup enables the Vertex AI API, grants that account roles/aiplatform.user, and creates
# no secret.
# --dry-run prints the commands a setup of an empty project would run and calls nothing.
# Every value in deploy/config.env can be overridden from the environment.
set -euo pipefail

# shellcheck source=deploy/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
load_config
PYTHON="${PYTHON:-python3}"
WORK_DIR="$(mktemp -d)"
trap 'rm -rf "$WORK_DIR"' EXIT

APIS=(
  cloudfunctions.googleapis.com     # the function itself
  run.googleapis.com                # gen2 functions run as Cloud Run services
  cloudbuild.googleapis.com         # the pipeline, and the build of the function's image
  artifactregistry.googleapis.com   # where that image is stored
  firestore.googleapis.com          # conversation history
  storage.googleapis.com            # large results
  secretmanager.googleapis.com      # the model API key (replaced below for vertex)
  iamcredentials.googleapis.com     # signBlob, for signed URLs without a private key
  logging.googleapis.com            # function and build logs
  telemetry.googleapis.com          # the function's spans, sent over OTLP
  cloudtrace.googleapis.com         # where those spans are read
  iam.googleapis.com                # creating the service accounts below
  cloudtasks.googleapis.com         # the queue that delivers background runs' slices
  # gcloud functions deploy reads the project (projects.get) on every run, as the deployer
  cloudresourcemanager.googleapis.com
)
# Vertex AI instead of the key's Secret Manager: Gemini, called with the runtime's own token.
[[ "$MODEL_PROVIDER" != vertex ]] || APIS=("${APIS[@]/#secretmanager.googleapis.com/aiplatform.googleapis.com}")
# With webhooks on, their signing secret lives in Secret Manager whatever the provider.
WEBHOOK_HOSTS="$(webhook_hosts)"
if [[ -n "$WEBHOOK_HOSTS" && "$MODEL_PROVIDER" == vertex ]]; then
  APIS+=(secretmanager.googleapis.com)
fi

enable_apis() {
  log "APIs"
  local enabled="" missing=() api
  [[ "$DRY_RUN" == 1 ]] || enabled="$(gcloud services list --enabled --project="$PROJECT_ID" --format='value(config.name)')"
  for api in "${APIS[@]}"; do
    grep -Fxq "$api" <<<"$enabled" || missing+=("$api")
  done
  ((${#missing[@]} == 0)) || run gcloud services enable "${missing[@]}" --project="$PROJECT_ID" --quiet
}

create_database() {
  log "Firestore database $FIRESTORE_DATABASE"
  if [[ "$DRY_RUN" == 0 ]] && gcloud firestore databases describe --database="$FIRESTORE_DATABASE" \
    --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; then
    return
  fi
  # Delete protection: deleting the database (every conversation) takes a deliberate
  # `gcloud firestore databases update --no-delete-protection` first.
  run gcloud firestore databases create --database="$FIRESTORE_DATABASE" \
    --location="$FIRESTORE_LOCATION" --type=firestore-native --delete-protection \
    --project="$PROJECT_ID" --quiet
  # CreateDatabase returns before the database exists; the TTL and index steps below need it.
  [[ "$DRY_RUN" == 1 ]] || retry gcloud firestore databases describe --database="$FIRESTORE_DATABASE" \
    --project="$PROJECT_ID" --format='value(name)' >/dev/null ||
    die "Firestore database $FIRESTORE_DATABASE was created but is not there yet: run setup again in a minute"
}

# A burst of TTL and index-field updates draws 409s (another field operation in progress)
# from the Firestore Admin API; IAM bindings can be refused while a new account propagates.
# Such calls are retried with a growing pause (printed once in a dry run).
run_retried() {
  if [[ "$DRY_RUN" == 1 ]]; then
    run "$@"
  else
    retry "$@"
  fi
}

# Firestore deletes a collection group's documents only under its own TTL policy (a
# parent's deletion leaves subcollections behind), so every group the code writes gets one.
create_ttl_policies() {
  local field groups existing="" group
  field="$(cd "$REPO_ROOT" && "$PYTHON" deploy/collection_groups.py --ttl-field)" || die "cannot read the TTL field"
  groups="$(cd "$REPO_ROOT" && "$PYTHON" deploy/collection_groups.py)" || die "cannot read the collection groups"
  log "TTL policies on $field"
  [[ "$DRY_RUN" == 1 ]] || existing="$(gcloud firestore fields ttls list --database="$FIRESTORE_DATABASE" \
    --project="$PROJECT_ID" --format='value(name)')"
  while IFS= read -r group; do
    grep -q "/collectionGroups/$group/fields/$field\$" <<<"$existing" && continue
    # --async: the policy takes minutes to become active and needs no waiting for.
    run_retried gcloud firestore fields ttls update "$field" --collection-group="$group" \
      --enable-ttl --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" --async --quiet
  done <<<"$groups"
}

create_service_account() { # name, display name
  local email="$1@$PROJECT_ID.iam.gserviceaccount.com"
  if [[ "$DRY_RUN" == 0 ]] && gcloud iam service-accounts describe "$email" \
    --project="$PROJECT_ID" --format='value(email)' >/dev/null 2>&1; then
    return
  fi
  run gcloud iam service-accounts create "$1" --display-name="$2" --project="$PROJECT_ID" --quiet
}

create_service_accounts() {
  log "Service accounts"
  create_service_account "$RUNTIME_SA_NAME" "Agent function runtime"
  create_service_account "$DEPLOYER_SA_NAME" "Agent pipeline deploy (Cloud Build)"
  create_service_account "$BUILDER_SA_NAME" "Agent function image build"
  create_service_account "$TESTER_SA_NAME" "Agent pipeline tests (Cloud Build, no roles)"
  create_service_account "$INVOKER_SA_NAME" "Agent background-run tasks (invokes the function)"
}

# Firestore indexes every field of every document by default. No query reads these fields
# (deploy/collection_groups.py --unindexed lists them from agent/store/schema.py), so their
# index entries are pure cost: more index writes per turn, and a write hotspot on
# timestamps that rise with every write. One exemption per field; existing ones are kept.
exempt_unqueried_fields() {
  local pairs existing="" group field
  pairs="$(cd "$REPO_ROOT" && "$PYTHON" deploy/collection_groups.py --unindexed)" || die "cannot read the unqueried fields"
  log "Firestore single-field index exemptions"
  [[ "$DRY_RUN" == 1 ]] || existing="$(gcloud firestore indexes fields list --database="$FIRESTORE_DATABASE" \
    --project="$PROJECT_ID" --format='value(name)')"
  while read -r group field; do
    grep -q "/collectionGroups/$group/fields/$field\$" <<<"$existing" && continue
    run_retried gcloud firestore indexes fields update "$field" --collection-group="$group" \
      --disable-indexes --database="$FIRESTORE_DATABASE" --project="$PROJECT_ID" --async --quiet
  done <<<"$pairs"
}

# Custom roles for what no predefined role grants narrowly enough. An existing role whose
# permissions differ is updated to these.
ensure_role() { # id, title, permissions (comma-separated)
  local current=""
  if [[ "$DRY_RUN" == 0 ]]; then
    current="$(gcloud iam roles describe "$1" --project="$PROJECT_ID" --format='value(includedPermissions)' 2>/dev/null)" || current="<none>"
  else
    current="<none>"
  fi
  if [[ "$current" == "<none>" ]]; then
    run gcloud iam roles create "$1" --project="$PROJECT_ID" --title="$2" --permissions="$3" --stage=GA --quiet
  elif [[ "$(tr ';,' '\n' <<<"$current" | sort)" != "$(tr ',' '\n' <<<"$3" | sort)" ]]; then
    run gcloud iam roles update "$1" --project="$PROJECT_ID" --permissions="$3" --quiet
  fi
}

create_roles() {
  log "Custom roles"
  # signBlob as itself and nothing else: roles/iam.serviceAccountTokenCreator would also let
  # the function mint access and ID tokens for itself.
  ensure_role "$SIGNER_ROLE_ID" "Agent: sign blobs (signed URLs)" iam.serviceAccounts.signBlob
  # What the deploy's privacy check reads beyond roles/cloudfunctions.developer: the Cloud
  # Run service behind the function (its invoker-IAM-check switch) and its IAM policy.
  ensure_role "$DEPLOY_ROLE_ID" "Agent: check the function is private" \
    run.services.get,run.services.getIamPolicy
}

create_repository() {
  log "Artifact Registry repository $ARTIFACT_REPOSITORY"
  if [[ "$DRY_RUN" == 1 ]] || ! gcloud artifacts repositories describe "$ARTIFACT_REPOSITORY" --location="$REGION" \
    --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; then
    run gcloud artifacts repositories create "$ARTIFACT_REPOSITORY" --repository-format=docker \
      --location="$REGION" --description="Images of the function" --project="$PROJECT_ID" --quiet
  fi
  # Every deploy pushes an image; without a cleanup policy they pile up (and are billed)
  # forever. Keep policies win over delete policies (Artifact Registry's rule), so the most
  # recent images stay for rollbacks however old. Re-applied on every run: same policy, no
  # change. Format: gcloud 528, command_lib/artifacts/cleanup_policy_util.py.
  [[ "$ARTIFACT_RETENTION_DAYS" =~ ^[1-9][0-9]*$ ]] || die "ARTIFACT_RETENTION_DAYS must be a whole number of days"
  [[ "$ARTIFACT_KEEP_VERSIONS" =~ ^[1-9][0-9]*$ ]] || die "ARTIFACT_KEEP_VERSIONS must be a positive whole number"
  local policy="$WORK_DIR/cleanup-$ARTIFACT_REPOSITORY.json"
  printf '[{"name": "delete-old", "action": {"type": "Delete"}, "condition": {"olderThan": "%dd"}},
 {"name": "keep-recent", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": %d}}]\n' \
    "$ARTIFACT_RETENTION_DAYS" "$ARTIFACT_KEEP_VERSIONS" >"$policy"
  log "$ARTIFACT_REPOSITORY cleanup policy: $(tr -d '\n' <"$policy")"
  run gcloud artifacts repositories set-cleanup-policies "$ARTIFACT_REPOSITORY" --location="$REGION" \
    --policy="$policy" --no-dry-run --project="$PROJECT_ID" --quiet
}

# Uniform access (IAM only, no object ACLs), public access prevention, and a lifecycle rule
# that deletes objects after the retention. An existing bucket gets the same settings
# re-applied: setting a value it already has changes nothing.
ensure_bucket() { # name, retention days
  local bucket="gs://$1" rules="$WORK_DIR/lifecycle-$1.json"
  printf '{"rule": [{"action": {"type": "Delete"}, "condition": {"age": %d}}]}\n' "$2" >"$rules"
  log "$bucket lifecycle: $(cat "$rules")"
  if [[ "$DRY_RUN" == 0 ]] && gcloud storage buckets describe "$bucket" \
    --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; then
    run gcloud storage buckets update "$bucket" --uniform-bucket-level-access --pap \
      --lifecycle-file="$rules" --project="$PROJECT_ID" --quiet
  else
    run gcloud storage buckets create "$bucket" --location="$REGION" --uniform-bucket-level-access \
      --pap --lifecycle-file="$rules" --project="$PROJECT_ID" --quiet
  fi
}

create_buckets() {
  log "Buckets"
  [[ "$RESULTS_RETENTION_DAYS" =~ ^[1-9][0-9]*$ ]] || die "RESULTS_RETENTION_DAYS must be a whole number of days"
  [[ "$BUILD_SOURCE_RETENTION_DAYS" =~ ^[1-9][0-9]*$ ]] || die "BUILD_SOURCE_RETENTION_DAYS must be a whole number of days"
  ensure_bucket "$RESULTS_BUCKET" "$RESULTS_RETENTION_DAYS"
  ensure_bucket "$BUILD_SOURCE_BUCKET" "$BUILD_SOURCE_RETENTION_DAYS"
}

# The background runs' queue. Every retry and rate setting is stated (none left to Cloud
# Tasks' defaults, which retry for ever at up to 1,000 dispatches a second); an existing
# queue gets them re-applied: the same values change nothing.
create_queue() {
  log "Cloud Tasks queue $RUNS_QUEUE_NAME"
  local verb=create
  if [[ "$DRY_RUN" == 0 ]] && gcloud tasks queues describe "$RUNS_QUEUE_NAME" --location="$REGION" \
    --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; then
    verb=update
  fi
  run gcloud tasks queues "$verb" "$RUNS_QUEUE_NAME" --location="$REGION" \
    --max-attempts="$RUNS_QUEUE_MAX_ATTEMPTS" --max-retry-duration="$RUNS_QUEUE_MAX_RETRY_DURATION" \
    --min-backoff="$RUNS_QUEUE_MIN_BACKOFF" --max-backoff="$RUNS_QUEUE_MAX_BACKOFF" \
    --max-doublings="$RUNS_QUEUE_MAX_DOUBLINGS" \
    --max-dispatches-per-second="$RUNS_QUEUE_MAX_DISPATCHES_PER_SECOND" \
    --max-concurrent-dispatches="$RUNS_QUEUE_MAX_CONCURRENT_DISPATCHES" \
    --project="$PROJECT_ID" --quiet
}

# The webhooks' Standard Webhooks secret: whsec_ and the base64 of 32 random bytes, made
# here and streamed to Secret Manager (never an argument, never printed). Only while
# WEBHOOK_ALLOWED_HOSTS names a host: without one, webhooks are off and need no secret.
create_webhook_secret() {
  [[ -n "$WEBHOOK_HOSTS" ]] || return 0
  log "Secret $WEBHOOK_SECRET_NAME (webhook signing)"
  if [[ "$DRY_RUN" == 1 ]]; then
    run gcloud secrets create "$WEBHOOK_SECRET_NAME" --replication-policy=automatic --project="$PROJECT_ID" --quiet
    run gcloud secrets versions add "$WEBHOOK_SECRET_NAME" --data-file=- --project="$PROJECT_ID" --format=none --quiet
    return
  fi
  if ! gcloud secrets describe "$WEBHOOK_SECRET_NAME" --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; then
    gcloud secrets create "$WEBHOOK_SECRET_NAME" --replication-policy=automatic --project="$PROJECT_ID" --quiet
  fi
  if [[ -n "$(gcloud secrets versions list "$WEBHOOK_SECRET_NAME" --filter='state=ENABLED' --limit=1 \
    --project="$PROJECT_ID" --format='value(name)')" ]]; then
    return
  fi
  { set +x; } 2>/dev/null
  local secret
  secret="whsec_$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  printf '%s' "$secret" | gcloud secrets versions add "$WEBHOOK_SECRET_NAME" --data-file=- \
    --project="$PROJECT_ID" --format=none --quiet
}

add_secret_version() {
  # xtrace would print the key; keep it off while the key is in a variable.
  { set +x; } 2>/dev/null
  local key
  if [[ -t 0 ]]; then
    read -rsp "Model API key for secret $SECRET_NAME (input hidden): " key
    printf '\n' >&2
  else
    key="$(cat)"
  fi
  key="${key%$'\r'}"
  [[ -n "$key" ]] || die "secret $SECRET_NAME has no version: pipe the model API key into this script (deploy/setup.sh < key-file)"
  # printf is a shell builtin: the key reaches gcloud's stdin without an argv of its own.
  printf '%s' "$key" | gcloud secrets versions add "$SECRET_NAME" --data-file=- \
    --project="$PROJECT_ID" --format=none --quiet
}

create_secret() {
  if [[ "$MODEL_PROVIDER" == vertex ]]; then
    log "MODEL_PROVIDER=vertex: no model secret (the runtime account's own token calls Vertex AI); secret $SECRET_NAME is neither created nor granted"
    return
  fi
  log "Secret $SECRET_NAME"
  if [[ "$DRY_RUN" == 1 ]]; then
    run gcloud secrets create "$SECRET_NAME" --replication-policy=automatic --project="$PROJECT_ID" --quiet
    run gcloud secrets versions add "$SECRET_NAME" --data-file=- --project="$PROJECT_ID" --format=none --quiet
    return
  fi
  if ! gcloud secrets describe "$SECRET_NAME" --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; then
    gcloud secrets create "$SECRET_NAME" --replication-policy=automatic --project="$PROJECT_ID" --quiet
  fi
  if [[ -z "$(gcloud secrets versions list "$SECRET_NAME" --filter='state=ENABLED' --limit=1 \
    --project="$PROJECT_ID" --format='value(name)')" ]]; then
    add_secret_version
  else
    log "secret $SECRET_NAME already has a value; to replace it: gcloud secrets versions add $SECRET_NAME --data-file=- --project=$PROJECT_ID"
  fi
}

# kind is one of: projects, buckets, secrets, service-accounts, functions, repositories,
# queues.
policy_command() {
  case "$1" in
    projects) echo "projects" ;;
    buckets) echo "storage buckets" ;;
    secrets) echo "secrets" ;;
    service-accounts) echo "iam service-accounts" ;;
    functions) echo "functions" ;;
    repositories) echo "artifacts repositories" ;;
    queues) echo "tasks queues" ;;
    *) die "unknown resource kind $1" ;;
  esac
}

# Regional resources are named by a location flag as well.
location_flags() {
  case "$1" in
    functions) echo "--region=$REGION" ;;
    repositories | queues) echo "--location=$REGION" ;;
    *) echo "" ;;
  esac
}

grant() { # kind, resource, member, role[, condition]
  local kind="$1" resource="$2" member="$3" role="$4" condition="${5:-}" command current where
  read -ra command <<<"$(policy_command "$kind")"
  read -ra where <<<"$(location_flags "$kind")"
  if [[ "$DRY_RUN" == 0 ]]; then
    current="$(gcloud "${command[@]}" get-iam-policy "$resource" "${where[@]}" --project="$PROJECT_ID" \
      --flatten='bindings[].members' --format='value(bindings.role,bindings.members)')"
    grep -Fxq "$role"$'\t'"$member" <<<"$current" && return
  fi
  local args=(gcloud "${command[@]}" add-iam-policy-binding "$resource" "${where[@]}" --member="$member" --role="$role")
  # Once a project policy holds a conditional binding, gcloud refuses unconditional ones in
  # non-interactive mode unless told so explicitly.
  if [[ -n "$condition" ]]; then
    args+=(--condition="$condition")
  elif [[ "$kind" == projects ]]; then
    args+=(--condition=None)
  fi
  run_retried "${args[@]}" --project="$PROJECT_ID" --format=none --quiet
}

grant_roles() {
  log "IAM bindings"
  local runtime="serviceAccount:$RUNTIME_SA_EMAIL"
  local deployer="serviceAccount:$DEPLOYER_SA_EMAIL"
  local builder="serviceAccount:$BUILDER_SA_EMAIL"
  local tester="serviceAccount:$TESTER_SA_EMAIL"
  local database="projects/$PROJECT_ID/databases/$FIRESTORE_DATABASE"

  # Runtime: Firestore in the service's database only (an IAM condition on the database's
  # resource name), objects in the results bucket alone, the one secret, and signBlob as
  # itself (signed URLs without a private key), through the custom role; and writing
  # spans (Telemetry API, TRACE_EXPORT=cloud_trace), a project-wide role only. With
  # MODEL_PROVIDER=vertex no secret, but calling Gemini: roles/aiplatform.user, on the
  # project (calls to Google's models are authorised there, not on a resource of their own).
  grant projects "$PROJECT_ID" "$runtime" roles/datastore.user \
    "expression=resource.name == \"$database\",title=agent-database-only"
  grant projects "$PROJECT_ID" "$runtime" roles/telemetry.tracesWriter
  grant buckets "gs://$RESULTS_BUCKET" "$runtime" roles/storage.objectUser
  if [[ "$MODEL_PROVIDER" == vertex ]]; then
    grant projects "$PROJECT_ID" "$runtime" roles/aiplatform.user
  else
    grant secrets "$SECRET_NAME" "$runtime" roles/secretmanager.secretAccessor
  fi
  grant service-accounts "$RUNTIME_SA_EMAIL" "$runtime" "projects/$PROJECT_ID/roles/$SIGNER_ROLE_ID"

  # Background runs: the runtime enqueues each slice into the one queue (create tasks, no
  # queue administration), and names the invoker account in each task's OIDC token, which
  # Cloud Tasks mints only for a caller that may act as that account. The invoker may
  # invoke the function (grant_invoker, once the function exists) and holds nothing else.
  # With webhooks on, the runtime reads their signing secret and the deployer lists its
  # versions to pin one.
  grant queues "$RUNS_QUEUE_NAME" "$runtime" roles/cloudtasks.enqueuer
  grant service-accounts "$INVOKER_SA_EMAIL" "$runtime" roles/iam.serviceAccountUser
  if [[ -n "$WEBHOOK_HOSTS" ]]; then
    grant secrets "$WEBHOOK_SECRET_NAME" "$runtime" roles/secretmanager.secretAccessor
    grant secrets "$WEBHOOK_SECRET_NAME" "$deployer" roles/secretmanager.viewer
  fi

  # Deployer (runs cloudbuild.yaml, no package code): Cloud Functions Developer on the
  # project, Google's documented deployer role. gcloud functions deploy needs it there, not
  # on the function: it asks for an upload URL on projects/P/locations/R
  # (cloudfunctions.functions.sourceCodeSet on that parent), creates the function on the
  # same parent, lists runtimes and reads the project (resourcemanager.projects.get), on
  # the first deploy and on every update. The custom role adds reading the Cloud Run
  # service and its policy (the privacy check). Then: write its build log, act as the
  # runtime and image-build accounts it hands to the function, read the uploaded source,
  # and list the secret's versions to pin one (metadata, not the value).
  grant projects "$PROJECT_ID" "$deployer" roles/cloudfunctions.developer
  grant projects "$PROJECT_ID" "$deployer" "projects/$PROJECT_ID/roles/$DEPLOY_ROLE_ID"
  grant projects "$PROJECT_ID" "$deployer" roles/logging.logWriter
  grant service-accounts "$RUNTIME_SA_EMAIL" "$deployer" roles/iam.serviceAccountUser
  grant service-accounts "$BUILDER_SA_EMAIL" "$deployer" roles/iam.serviceAccountUser
  grant buckets "gs://$BUILD_SOURCE_BUCKET" "$deployer" roles/storage.objectViewer
  [[ "$MODEL_PROVIDER" == vertex ]] || grant secrets "$SECRET_NAME" "$deployer" roles/secretmanager.viewer

  # Builder (builds the function's image): write its log and the image into the one
  # repository, and the objects of the gcf-v2-sources-* buckets where Cloud Functions stages
  # the source, no other: roles/storage.objectAdmin, what Cloud Run's build-account page
  # lists for source builds (a read alone can be too narrow), under that condition.
  grant projects "$PROJECT_ID" "$builder" roles/logging.logWriter
  grant repositories "$ARTIFACT_REPOSITORY" "$builder" roles/artifactregistry.writer
  grant projects "$PROJECT_ID" "$builder" roles/storage.objectAdmin \
    'expression=resource.name.startsWith("projects/_/buckets/gcf-v2-sources-"),title=gcf-v2-sources-only'

  # Tester (runs cloudbuild-test.yaml and so every package the tests install): its build log
  # and the uploaded source, read-only. Nothing it could change, nothing to deploy with.
  grant projects "$PROJECT_ID" "$tester" roles/logging.logWriter
  grant buckets "gs://$BUILD_SOURCE_BUCKET" "$tester" roles/storage.objectViewer
}

enable_apis
create_database
create_ttl_policies
exempt_unqueried_fields
create_service_accounts
create_roles
create_repository
create_buckets
create_queue
create_secret
create_webhook_secret
grant_roles
grant_invoker
log "setup of $PROJECT_ID done; next: PROJECT_ID=$PROJECT_ID deploy/pipeline.sh"
