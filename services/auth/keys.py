"""The keys of a secured deployment, made once and kept in one file only its owner may read.

- the **issuer** (an account nkey): signs the user JWTs the callout returns; the server trusts its
  public key (``auth_callout.issuer``); only the auth service holds the seed.
- the **token key** (an operator-role nkey, so it is never mistaken for an account): signs session
  tokens; whoever mints tokens holds the seed (``chameleon session create``, the launcher), the
  auth service only the public key, so the process that reads untrusted input cannot mint.
- one **password** per service user, the admin and the system user.

Why a file: ``chameleon up`` and a later ``chameleon session create`` must agree on the keys, and
tokens should outlive a restart. Rotation (docs/security.md) is replacing the file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from shared.auth import ADMIN_USER, SERVICE_ROLES, SYSTEM_USER, NatsCredentials, ServerAuth, SessionLimits
from shared.auth import server_auth as build_server_auth
from shared.subjects import Subjects
from shared.tokens import KeysError, keypair, new_seed, public_key

KEYS_VERSION = 1
USERS = (*SERVICE_ROLES, ADMIN_USER, SYSTEM_USER)
SECRET_MODE = 0o440  # its owner (the one service that reads it) and that owner's group


def password_file(user: str) -> str:
    """The secret file of a user's password: ``ingest_password``, ``auth_sys_password`` …"""
    return f"{user.replace('-', '_')}_password"


@dataclass(frozen=True)
class AuthKeys:
    """Everything secret a secured deployment needs (see the module docstring)."""

    issuer_seed: str = field(repr=False)
    token_seed: str = field(repr=False)
    passwords: Mapping[str, str] = field(repr=False)

    @property
    def issuer_public(self) -> str:
        return public_key(self.issuer_seed)

    @property
    def token_public(self) -> str:
        return public_key(self.token_seed)

    def credentials(self, user: str) -> NatsCredentials:
        return NatsCredentials(user=user, password=self.passwords[user])

    def secret_files(self) -> dict[str, str]:
        """One file per secret, as a deployment hands each service only its own (compose
        ``secrets:``): the issuer seed (auth), the token key's seed (whoever mints) and public half
        (auth), one password per user."""
        files = {
            "issuer_seed": self.issuer_seed,
            "token_seed": self.token_seed,
            "token_public_key": self.token_public,
        }
        files.update({password_file(u): p for u, p in self.passwords.items()})
        return files

    def server_auth(self, subjects: Subjects, limits: SessionLimits | None = None) -> ServerAuth:
        return build_server_auth(self.issuer_public, self.passwords, subjects, limits)

    @classmethod
    def generate(cls) -> AuthKeys:
        return cls(
            issuer_seed=new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            token_seed=new_seed(nkeys.PREFIX_BYTE_OPERATOR),
            passwords={u: secrets.token_urlsafe(24) for u in USERS},
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "version": KEYS_VERSION,
            "issuer_seed": self.issuer_seed,
            "token_seed": self.token_seed,
            "passwords": dict(self.passwords),
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> AuthKeys:
        try:
            body = json.loads(path.read_text())
            keys = cls(str(body["issuer_seed"]), str(body["token_seed"]), dict(body["passwords"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeysError(f"{path}: not a keys file ({exc})") from None
        keypair(keys.issuer_seed), keypair(keys.token_seed)  # fail here, not at the first token
        return keys

    @classmethod
    def load_or_create(cls, path: Path) -> AuthKeys:
        """The keys in ``path``, made (and saved, mode 0600) when it does not exist; a user the
        file predates gets a password of its own."""
        if not path.exists():
            keys = cls.generate()
            keys.save(path)
            return keys
        keys = cls.load(path)
        missing = [u for u in USERS if u not in keys.passwords]
        if missing:
            passwords = {**keys.passwords, **{u: secrets.token_urlsafe(24) for u in missing}}
            keys = cls(keys.issuer_seed, keys.token_seed, passwords)
            keys.save(path)
        return keys


def write_secret(
    path: Path, content: str, owner: tuple[int, int] | None = None, mode: int = SECRET_MODE
) -> None:
    """``content`` into ``path`` (replaced whole, never readable by others on the way), owned by
    ``owner`` (uid, gid) when given: the one service user that reads it."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content if content.endswith("\n") else content + "\n")
    if owner is not None:
        os.chown(tmp, *owner)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
