"""What the tests share and are not tests themselves.

Stand-ins for Google endpoints (``google_id_tokens``: the identity-token certs endpoint and
a token minter; ``google_metadata_and_iam``: the metadata server, the OAuth token endpoint
and IAM signBlob), checkers (``openapi_contract``: responses against openapi.yaml;
``signed_url_verifier``: V4 signed URLs, offline), a Server-Sent Events reader
(``sse_client``), the deploy tests' harness (``deploy_scenarios``: the scripts run against
the recording fake gcloud; ``gcloud_replay`` and its ``gcloud_replay_driver``: commands
through the real gcloud parser; ``iam_model``: the permissions each gcloud call checks and
each granted role holds, which the fake gcloud enforces), fixture plugins
(``storage_fixtures``, ``deploy_scenarios``; listed in ``pytest_plugins`` of
tests/conftest.py) and the shared constants (``constants``).
"""
