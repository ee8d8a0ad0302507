"""Who is calling: optional API keys, each a tenant, and user ids scoped to it.

Without keys (the default) the service trusts what the client says: ``user_id`` is whoever the
client claims, and anyone can post outcomes for, or delete, any user's predictions (README,
"What it trusts"). With keys, every request needs ``Authorization: Bearer <token>``; the token
names a tenant, and everything stored or learned is keyed by ``tenant/user_id``: users of two
tenants never share predictions, outcomes or a personal prior, and an outcome is accepted only
from the tenant that made the prediction (another tenant's id is answered as unknown).

Keys come from ``api_keys`` (``tenant=token,...``, e.g. from a secret in the environment) and/or
``api_keys_file`` (lines ``tenant sha256-of-token``, written by
``python -m deployments.serving.identity TENANT TOKEN``). Only sha256 digests are kept in
memory or on disk; a presented token is hashed and looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
from pathlib import Path

from starlette.requests import Request

from core.errors import Unauthorized
from core.settings import Settings

__all__ = ["ApiKeys", "key_line", "owned_by", "scoped_user", "KEYS"]

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_line(tenant: str, token: str) -> str:
    """A line of ``api_keys_file``: the tenant and the token's sha256 (the token is not kept)."""
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant {tenant!r}: letters, digits, '_', '.', '-' (at most 64)")
    if len(token) < 16:
        raise ValueError("a token must have at least 16 characters")
    return f"{tenant} {_digest(token)}"


class ApiKeys:
    """Digest → tenant. Built once per Ingress replica from the settings."""

    def __init__(self, digests: dict[str, str]) -> None:
        self._tenants = dict(digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys | None:
        """The keys the settings give, or None (no keys: the service trusts what clients say).
        A key file that is named but missing or malformed is an error, not "no keys"."""
        digests: dict[str, str] = {}
        if settings.api_keys is not None:
            for pair in filter(None, (p.strip() for p in settings.api_keys.get_secret_value().split(","))):
                tenant, sep, token = pair.partition("=")
                if not sep:
                    raise ValueError("api_keys: each entry is tenant=token")
                digests[key_line(tenant.strip(), token.strip()).split()[1]] = tenant.strip()
        if settings.api_keys_file is not None:
            digests.update(_read_key_file(settings.api_keys_file))
        return cls(digests) if digests else None

    def tenant(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
        digest = _digest(token.strip())
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthorized("the API key is not valid")

    def __len__(self) -> int:
        return len(self._tenants)


def _read_key_file(path: Path) -> dict[str, str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"api_keys_file cannot be read ({type(exc).__name__})") from None
    digests: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _TENANT.match(parts[0]) or not _DIGEST.match(parts[1]):
            raise ValueError(f"api_keys_file line {n}: expected 'tenant sha256-hex'")
        digests[parts[1]] = parts[0]
    return digests


class _KeyRing:
    """The replica's keys, set by the Ingress constructor (None: no keys)."""

    keys: ApiKeys | None = None

    def tenant_of(self, request: Request) -> str | None:
        if self.keys is None:
            return None
        return self.keys.tenant(request.headers.get("authorization"))


KEYS = _KeyRing()


def scoped_user(tenant: str | None, user_id: str) -> str:
    """The user id as stored and learned from: the tenant's own namespace when there are keys."""
    return user_id if tenant is None else f"{tenant}/{user_id}"


def owned_by(tenant: str | None, stored_user_id: str) -> bool:
    """Whether a stored prediction belongs to ``tenant`` (always, without keys)."""
    return tenant is None or stored_user_id.startswith(f"{tenant}/")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m deployments.serving.identity TENANT TOKEN  # a line of api_keys_file")
    sys.stdout.write(key_line(sys.argv[1], sys.argv[2]) + "\n")
