"""A permission model of the Google Cloud calls the deploy scripts make (issue 19).

Two tables and one check, read by the fake gcloud (tests/fakes/gcloud, which runs with
``python3 -S -E`` and so imports this module by path: standard library only) and by the
deploy tests:

- ``checks(argv, ...)``: for each gcloud command the scripts run, the permissions Google
  checks and on which resource, and who must hold them (the caller, or the account a
  build runs as). Each entry cites where that is written: gcloud 528's own source under
  /usr/lib/google-cloud-sdk/lib/googlecloudsdk/ (what the command calls) and the REST
  reference of the method (what the method checks).
- ``ROLES``: for each role the scripts grant, the permissions it holds, from Google's IAM
  roles reference (cited and dated below). Only the permissions this model checks are
  listed: a role's other permissions cannot make a check pass, so leaving them out can only
  make the model stricter than Google, never laxer.
- ``allowed(...)``: whether a member holds a permission on a resource through the bindings
  the scripts made, following the resource hierarchy (a binding on the project reaches
  everything in it; one on a function reaches that function only) and the two IAM
  condition forms the scripts use.

The project's operator, who runs setup.sh and pipeline.sh by hand, is modelled as
``roles/owner`` (Google's basic role with full access). The accounts setup creates hold
exactly what setup grants them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPERATOR = "user:operator@example.com"
"""Who runs setup.sh and pipeline.sh: the project's owner."""

REFERENCE_DATE = "2026-12-07"
"""When the role contents below were read."""

IAM_ROLES_REFERENCE = "https://cloud.google.com/iam/docs/roles-permissions"
FUNCTIONS_ROLES_REFERENCE = "https://cloud.google.com/functions/docs/reference/iam/roles"

# --- Roles: the permissions each holds (the subset this model checks) -------------------
# Sources, read on REFERENCE_DATE: Google's IAM roles and permissions index
# (IAM_ROLES_REFERENCE/<service>) and, for Cloud Functions, FUNCTIONS_ROLES_REFERENCE,
# whose table lists for roles/cloudfunctions.developer: cloudfunctions.functions.{call,
# create,delete,get,invoke,list,update,sourceCodeGet,sourceCodeSet},
# cloudfunctions.operations.{get,list}, cloudfunctions.locations.list,
# resourcemanager.projects.get, serviceusage.services.get (and cloudbuild.builds.get/list,
# eventarc.*, not modelled). It holds no getIamPolicy/setIamPolicy and no actAs: "you must
# also assign ... roles/iam.serviceAccountUser on the runtime service account" (same page).
ROLES: dict[str, frozenset[str]] = {
    # Basic role: full access to the project's resources (IAM_ROLES_REFERENCE, basic roles).
    "roles/owner": frozenset({"*"}),
    "roles/cloudfunctions.developer": frozenset(
        {
            "cloudfunctions.functions.call",
            "cloudfunctions.functions.create",
            "cloudfunctions.functions.delete",
            "cloudfunctions.functions.get",
            "cloudfunctions.functions.invoke",
            "cloudfunctions.functions.list",
            "cloudfunctions.functions.update",
            "cloudfunctions.functions.sourceCodeGet",
            "cloudfunctions.functions.sourceCodeSet",
            "cloudfunctions.operations.get",
            "cloudfunctions.operations.list",
            "cloudfunctions.locations.list",
            "resourcemanager.projects.get",
            "serviceusage.services.get",
        }
    ),
    # IAM_ROLES_REFERENCE/logging: roles/logging.logWriter.
    "roles/logging.logWriter": frozenset({"logging.logEntries.create"}),
    # IAM_ROLES_REFERENCE/iam: roles/iam.serviceAccountUser.
    "roles/iam.serviceAccountUser": frozenset(
        {"iam.serviceAccounts.actAs", "iam.serviceAccounts.get", "iam.serviceAccounts.list"}
    ),
    # IAM_ROLES_REFERENCE/storage: roles/storage.objectViewer, objectUser, objectAdmin.
    "roles/storage.objectViewer": frozenset({"storage.objects.get", "storage.objects.list"}),
    "roles/storage.objectUser": frozenset(
        {
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.update",
        }
    ),
    "roles/storage.objectAdmin": frozenset(
        {
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.update",
        }
    ),
    # IAM_ROLES_REFERENCE/secretmanager: viewer (metadata, versions list), secretAccessor.
    "roles/secretmanager.viewer": frozenset(
        {
            "secretmanager.secrets.get",
            "secretmanager.secrets.list",
            "secretmanager.versions.list",
            "secretmanager.versions.get",
        }
    ),
    "roles/secretmanager.secretAccessor": frozenset({"secretmanager.versions.access"}),
    # IAM_ROLES_REFERENCE/artifactregistry: roles/artifactregistry.writer (holds reader's too).
    "roles/artifactregistry.writer": frozenset(
        {
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.repositories.uploadArtifacts",
            "artifactregistry.repositories.get",
        }
    ),
    # IAM_ROLES_REFERENCE/datastore, /cloudtrace (telemetry), /aiplatform: the runtime's
    # roles; no deploy call checks them.
    "roles/datastore.user": frozenset({"datastore.entities.get", "datastore.entities.create"}),
    "roles/telemetry.tracesWriter": frozenset({"telemetry.traces.write"}),
    "roles/aiplatform.user": frozenset({"aiplatform.endpoints.predict"}),
    # IAM_ROLES_REFERENCE/cloudtasks: roles/cloudtasks.enqueuer ("Cloud Tasks Enqueuer":
    # cloudtasks.tasks.create, cloudtasks.tasks.fullView; no queue administration).
    "roles/cloudtasks.enqueuer": frozenset(
        {"cloudtasks.tasks.create", "cloudtasks.tasks.fullView"}
    ),
    # IAM_ROLES_REFERENCE/run: roles/run.invoker ("Cloud Run Invoker": run.routes.invoke,
    # and running jobs, which this project has none of).
    "roles/run.invoker": frozenset({"run.routes.invoke", "run.jobs.run"}),
}


@dataclass(frozen=True)
class Check:
    """One permission Google checks for a call: who must hold it, on which resource, and
    the API that must be enabled in the project for a service account's call to reach it
    (None: checked inside a Google service, not by a call of the caller's)."""

    who: str
    permission: str
    resource: str
    why: str
    api: str | None = None


class NotModelled(Exception):
    """A call the scripts make that this model has no entry for: a test must notice."""


def _split(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    positionals: list[str] = []
    flags: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value
        else:
            positionals.append(arg)
    return positionals, flags


def bucket_resource(url: str) -> str:
    return "projects/_/buckets/" + url.removeprefix("gs://").split("/", 1)[0]


def checks(argv: list[str], caller: str, function_exists: bool, project_number: str) -> list[Check]:
    """The permissions a gcloud call checks. ``function_exists``: whether the named
    function exists before a ``functions deploy`` (create or update)."""
    pos, flags = _split(argv)
    project = flags.get("project", "")
    p = f"projects/{project}"
    words = tuple(pos)

    def one(permission: str, resource: str, why: str, api: str | None = None) -> list[Check]:
        return [Check(caller, permission, resource, why, api)]

    def starts(*prefix: str) -> bool:
        return words[: len(prefix)] == prefix

    # Setup's calls (run by the operator). REST references: serviceusage v1 services.list /
    # batchEnable; firestore v1 databases.get/create, fields.list/patch; iam v1
    # serviceAccounts.get/create, roles.get/create/patch; artifactregistry v1
    # repositories.get/create; storage v1 buckets.get/insert/patch; secretmanager v1.
    simple = {
        ("services", "list"): ("serviceusage.services.list", p),
        ("services", "enable"): ("serviceusage.services.enable", p),
        ("firestore", "databases", "describe"): ("datastore.databases.getMetadata", p),
        ("firestore", "databases", "create"): ("datastore.databases.create", p),
        ("firestore", "fields", "ttls", "list"): ("datastore.indexes.list", p),
        ("firestore", "fields", "ttls", "update"): ("datastore.indexes.update", p),
        ("firestore", "indexes", "fields", "list"): ("datastore.indexes.list", p),
        ("firestore", "indexes", "fields", "update"): ("datastore.indexes.update", p),
        ("iam", "service-accounts", "create"): ("iam.serviceAccounts.create", p),
        ("iam", "roles", "describe"): ("iam.roles.get", p),
        ("iam", "roles", "create"): ("iam.roles.create", p),
        ("iam", "roles", "update"): ("iam.roles.update", p),
        ("secrets", "create"): ("secretmanager.secrets.create", p),
        ("projects", "get-iam-policy"): ("resourcemanager.projects.getIamPolicy", p),
        ("projects", "add-iam-policy-binding"): ("resourcemanager.projects.setIamPolicy", p),
    }
    for prefix, (permission, resource) in simple.items():
        if starts(*prefix):
            return one(permission, resource, "gcloud " + " ".join(prefix))
    region = flags.get("region") or flags.get("location") or ""
    loc = f"{p}/locations/{region}"
    if starts("iam", "service-accounts"):
        sa = f"{p}/serviceAccounts/{pos[3]}"
        verb = {
            "describe": "get",
            "get-iam-policy": "getIamPolicy",
            "add-iam-policy-binding": "setIamPolicy",
        }[pos[2]]
        return one(f"iam.serviceAccounts.{verb}", sa, f"gcloud iam service-accounts {pos[2]}")
    if starts("artifacts", "repositories"):
        repo = f"{loc}/repositories/{pos[3]}"
        verb = {
            "describe": "get",
            "create": "create",
            "get-iam-policy": "getIamPolicy",
            "add-iam-policy-binding": "setIamPolicy",
            # artifactregistry v1 repositories.patch (cleanupPolicies): update.
            "set-cleanup-policies": "update",
        }[pos[2]]
        target = loc if verb == "create" else repo
        return one(f"artifactregistry.repositories.{verb}", target, "gcloud artifacts")
    if starts("storage", "buckets"):
        verb = {
            "describe": "get",
            "create": "create",
            "update": "update",
            "get-iam-policy": "getIamPolicy",
            "add-iam-policy-binding": "setIamPolicy",
        }[pos[2]]
        target = p if verb == "create" else bucket_resource(pos[3])
        return one(f"storage.buckets.{verb}", target, "gcloud storage buckets")
    if starts("secrets", "versions", "list"):
        # secretmanager v1 projects.secrets.versions.list: secretmanager.versions.list on
        # the secret.
        return one(
            "secretmanager.versions.list",
            f"{p}/secrets/{pos[3]}",
            "secrets versions list (REST: versions.list on the parent secret)",
            "secretmanager.googleapis.com",
        )
    if starts("secrets", "versions", "add"):
        return one("secretmanager.versions.add", f"{p}/secrets/{pos[3]}", "secrets versions add")
    if starts("secrets"):
        verb = {
            "describe": "get",
            "get-iam-policy": "getIamPolicy",
            "add-iam-policy-binding": "setIamPolicy",
        }[pos[1]]
        return one(f"secretmanager.secrets.{verb}", f"{p}/secrets/{pos[2]}", "gcloud secrets")
    if starts("functions", "get-iam-policy") or starts("functions", "add-iam-policy-binding"):
        verb = "getIamPolicy" if pos[1] == "get-iam-policy" else "setIamPolicy"
        return one(
            f"cloudfunctions.functions.{verb}",
            f"{loc}/functions/{pos[2]}",
            "gcloud functions *-iam-policy*",
        )
    if starts("functions", "describe"):
        # cloudfunctions v2 projects.locations.functions.get.
        return one(
            "cloudfunctions.functions.get",
            f"{loc}/functions/{pos[2]}",
            "functions describe (REST v2 functions.get)",
            "cloudfunctions.googleapis.com",
        )
    if starts("projects", "describe"):
        # cloudresourcemanager v1 projects.get: resourcemanager.projects.get.
        return one(
            "resourcemanager.projects.get",
            p,
            "projects describe (CRM projects.get)",
            "cloudresourcemanager.googleapis.com",
        )
    if starts("tasks", "queues"):
        # cloudtasks v2 projects.locations.queues.get/create/patch/getIamPolicy/setIamPolicy:
        # cloudtasks.queues.{get,create,update,getIamPolicy,setIamPolicy}; create on the
        # parent location (REST reference of each method, "Authorization requires").
        queue = f"{loc}/queues/{pos[3]}"
        verb = {
            "describe": "get",
            "create": "create",
            "update": "update",
            "get-iam-policy": "getIamPolicy",
            "add-iam-policy-binding": "setIamPolicy",
        }[pos[2]]
        return one(
            f"cloudtasks.queues.{verb}",
            loc if verb == "create" else queue,
            f"gcloud tasks queues {pos[2]}",
            "cloudtasks.googleapis.com",
        )
    if starts("run", "services", "add-iam-policy-binding"):
        # run v1 projects.locations.services.setIamPolicy: run.services.setIamPolicy (only
        # the operator's pipeline run and setup make it; the deployer cannot).
        return one(
            "run.services.setIamPolicy",
            f"{loc}/services/{pos[3]}",
            "run services add-iam-policy-binding (REST: services.setIamPolicy)",
            "run.googleapis.com",
        )
    if starts("run", "services", "get-iam-policy"):
        # run v1 projects.locations.services.getIamPolicy.
        return one(
            "run.services.getIamPolicy",
            f"{loc}/services/{pos[3]}",
            "run services get-iam-policy (REST: services.getIamPolicy)",
            "run.googleapis.com",
        )
    if starts("run", "services", "describe"):
        # run v1 namespaces.services.get / v2 projects.locations.services.get.
        return one(
            "run.services.get",
            f"{loc}/services/{pos[3]}",
            "run services describe (REST: services.get)",
            "run.googleapis.com",
        )
    if starts("functions", "deploy"):
        return _deploy_checks(pos, flags, caller, p, loc, function_exists, project_number)
    if starts("builds", "submit"):
        return _build_checks(flags, caller, p, pos[2] if len(pos) > 2 else ".")
    if starts("auth", "print-identity-token"):
        # surface/auth/print_identity_token.py: an ID token of the active account, from its
        # own credentials (a person's refresh token, or the metadata server of a service
        # account): no IAM permission. The call it is for (the eval gate calling the staging
        # function) needs run.routes.invoke on that service, which Google's front end
        # checks; the operator (an Owner) has it.
        return []
    if starts("builds", "describe"):
        # cloudbuild v1 projects.locations.builds.get: cloudbuild.builds.get.
        return one("cloudbuild.builds.get", p, "builds describe (REST: builds.get)")
    if starts("builds", "log"):
        # surface/builds/log.py: GetBuild, then (beta) the build's entries from Cloud
        # Logging (entries.list: logging.logEntries.list).
        return [
            Check(caller, "cloudbuild.builds.get", p, "builds log: GetBuild"),
            Check(caller, "logging.logEntries.list", p, "builds log --stream: Cloud Logging"),
        ]
    raise NotModelled(f"no permission model for: gcloud {' '.join(argv)}")


SOURCE = "googlecloudsdk/command_lib/functions/v2/deploy/command.py"


def _deploy_checks(
    pos: list[str],
    flags: dict[str, str],
    caller: str,
    p: str,
    loc: str,
    exists: bool,
    project_number: str,
) -> list[Check]:
    """What `gcloud functions deploy NAME --gen2 --source=.` checks (gcloud 528)."""
    function = f"{loc}/functions/{pos[2]}"
    cf = "cloudfunctions.googleapis.com"
    out = [
        # Run(): client.GetFunction (REST v2 functions.get; NOT_FOUND means "create").
        Check(caller, "cloudfunctions.functions.get", function, f"{SOURCE} Run: GetFunction", cf),
        # Run(): client.ListRuntimes(location). The v2 REST reference names no permission of
        # its own for runtimes.list; modelled as the location-level read the functions roles
        # carry, cloudfunctions.locations.list.
        Check(caller, "cloudfunctions.locations.list", loc, f"{SOURCE} Run: ListRuntimes", cf),
        # _GetSourceLocal: GenerateUploadUrl on the PARENT (projects/P/locations/R); REST v2
        # functions.generateUploadUrl: cloudfunctions.functions.sourceCodeSet on the parent.
        # A role bound on the function alone does not reach it.
        Check(
            caller,
            "cloudfunctions.functions.sourceCodeSet",
            loc,
            f"{SOURCE} _GetSourceLocal: GenerateUploadUrl(parent)",
            cf,
        ),
        # ValidateDefaultBuildServiceAccountAndPromptWarning (command_lib/functions/
        # service_account_util.py) calls project_util.GetProjectNumber on every deploy, and
        # _GetServiceConfig does too whenever a secrets flag is given: Cloud Resource
        # Manager projects.get, resourcemanager.projects.get on the project.
        Check(
            caller,
            "resourcemanager.projects.get",
            p,
            "service_account_util: projects_util.GetProjectNumber",
            "cloudresourcemanager.googleapis.com",
        ),
    ]
    if exists:
        # _UpdateAndWait: functions.patch: cloudfunctions.functions.update on the function.
        out.append(
            Check(
                caller,
                "cloudfunctions.functions.update",
                function,
                f"{SOURCE} _UpdateAndWait: Patch",
                cf,
            )
        )
    else:
        # _CreateAndWait: functions.create on the parent: cloudfunctions.functions.create.
        out.append(
            Check(
                caller,
                "cloudfunctions.functions.create",
                loc,
                f"{SOURCE} _CreateAndWait: Create(parent)",
                cf,
            )
        )
    # Both wait on the long-running operation (operations.get) and read the function again
    # (_GetFunctionWithRetry).
    out.append(
        Check(
            caller,
            "cloudfunctions.operations.get",
            f"{loc}/operations/op",
            f"{SOURCE} _CreateAndWait/_UpdateAndWait: WaitForOperation",
            cf,
        )
    )
    # The function runs as --service-account and builds as --build-service-account: Cloud
    # Functions checks the caller may act as each (functions roles page, "Additional
    # configuration for deployment": roles/iam.serviceAccountUser on the runtime account).
    for flag in ("service-account", "build-service-account"):
        if flags.get(flag):
            email = flags[flag].rsplit("/", 1)[-1]
            out.append(
                Check(
                    caller,
                    "iam.serviceAccounts.actAs",
                    f"{p}/serviceAccounts/{email}",
                    f"--{flag}: actAs",
                )
            )
    # The image build runs as the build account: it reads the staged source from the
    # gcf-v2-sources-NUMBER-REGION bucket, pushes the image to --docker-repository and writes
    # its log (Cloud Run functions "build service account" page).
    builder = flags.get("build-service-account", "").rsplit("/", 1)[-1]
    if builder:
        member = f"serviceAccount:{builder}"
        region = loc.rsplit("/", 1)[-1]
        staged = f"projects/_/buckets/gcf-v2-sources-{project_number}-{region}/objects/src.zip"
        out += [
            Check(member, "storage.objects.get", staged, "image build reads the staged source"),
            Check(
                member,
                "artifactregistry.repositories.uploadArtifacts",
                flags.get("docker-repository", f"{loc}/repositories/gcf-artifacts"),
                "image build pushes the image",
            ),
            Check(member, "logging.logEntries.create", p, "image build writes its log"),
        ]
    return out


def _build_checks(flags: dict[str, str], caller: str, p: str, source: str) -> list[Check]:
    """`gcloud builds submit SOURCE --service-account=... --gcs-source-staging-dir=gs://B/x`:
    the caller uploads the source (a directory), or has Cloud Storage copy an object already
    staged (a gs:// SOURCE: command_lib/builds/staging_bucket_util.py Upload, a rewrite,
    which reads it: storage.objects.get), and creates the build as that account; the build
    account then fetches the source and writes its log (CLOUD_LOGGING_ONLY)."""
    account = flags.get("service-account", "").rsplit("/", 1)[-1]
    staging = bucket_resource(flags.get("gcs-source-staging-dir", "gs://missing"))
    member = f"serviceAccount:{account}"
    copied = []
    if source.startswith("gs://"):
        name = f"{bucket_resource(source)}/objects/{source.removeprefix('gs://').split('/', 1)[-1]}"
        copied = [Check(caller, "storage.objects.get", name, "rewrite: reads the staged source")]
    return [
        *copied,
        Check(caller, "storage.objects.create", f"{staging}/objects/source.tgz", "upload"),
        Check(caller, "cloudbuild.builds.create", p, "builds.create"),
        Check(
            caller,
            "iam.serviceAccounts.actAs",
            f"{p}/serviceAccounts/{account}",
            "a build run as a user-specified service account",
        ),
        Check(
            member,
            "storage.objects.get",
            f"{staging}/objects/source.tgz",
            "the build fetches its source",
        ),
        Check(member, "logging.logEntries.create", p, "logging: CLOUD_LOGGING_ONLY"),
    ]


# --- Granted bindings and the check -----------------------------------------------------

Binding = tuple[str, str, str, "str | None"]
"""(full resource name, role, member, condition or None)."""


def ancestors(resource: str, project: str) -> list[str]:
    """The resource and every resource above it: a binding on any of them reaches it.
    Buckets (projects/_/buckets/B) sit under their project."""
    parts = resource.split("/")
    out = ["/".join(parts[:i]) for i in range(2, len(parts) + 1, 2)]
    if f"projects/{project}" not in out:
        out.append(f"projects/{project}")
    return out


def condition_holds(condition: str, resource: str) -> bool:
    match = re.match(r'expression=resource\.name == "([^"]*)"', condition)
    if match:
        return resource == match.group(1) or resource.startswith(match.group(1) + "/")
    match = re.match(r'expression=resource\.name\.startsWith\("([^"]*)"\)', condition)
    if match:
        return resource.startswith(match.group(1))
    raise NotModelled(f"condition not modelled: {condition}")


def role_permissions(role: str, custom: dict[str, list[str]]) -> frozenset[str]:
    if role in ROLES:
        return ROLES[role]
    custom_id = role.rsplit("/", 1)[-1]
    if "/roles/" in role and custom_id in custom:
        return frozenset(custom[custom_id])
    raise NotModelled(f"role not modelled: {role}")


def allowed(
    bindings: list[Binding],
    custom: dict[str, list[str]],
    member: str,
    permission: str,
    resource: str,
    project: str,
) -> bool:
    reach = set(ancestors(resource, project))
    for where, role, who, condition in bindings:
        if who != member or where not in reach:
            continue
        held = role_permissions(role, custom)
        if "*" not in held and permission not in held:
            continue
        if condition is None or condition_holds(condition, resource):
            return True
    return False
