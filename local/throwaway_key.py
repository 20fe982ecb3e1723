"""A throw-away service-account key, made at run time, for signing URLs locally.

The local run signs result URLs with it (the ``private_key`` method), and the tests
verify signatures against its public half. The key is never a real account's: its
token endpoint is a closed loopback port, so nothing can use it to call Google.
It lives in a temporary directory and is never written into the repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class ThrowawayKey:
    email: str
    private_pem: str
    public_pem: str

    def service_account_info(self, project: str) -> dict[str, str]:
        """The JSON of a service-account key file, as Google issues them."""
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "throwaway",
            "private_key": self.private_pem,
            "client_email": self.email,
            "client_id": "0",
            "token_uri": "http://127.0.0.1:9/token",  # discard port: never a real token
        }

    def write(self, directory: Path, project: str) -> Path:
        path = directory / "throwaway-service-account.json"
        path.write_text(json.dumps(self.service_account_info(project)), encoding="utf-8")
        path.chmod(0o600)
        return path


def new_key(email: str = "local-signer@demo-local.iam.gserviceaccount.com") -> ThrowawayKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ThrowawayKey(email, private.decode(), public.decode())
