"""Auth callout service: ``python -m services.auth.main``."""

from __future__ import annotations

import dataclasses
import os

from runtime.service import service_main
from services.auth.handlers import AuthHandlers
from services.auth.settings import AuthSettings
from shared.auth import ENV_KEYS_FILE, SYSTEM_USER, read_keys_file
from shared.tokens import public_key


def with_keys_file(settings: AuthSettings, path: str) -> AuthSettings:
    """Settings the environment left empty, from the deployment's keys file (compose mounts it):
    the issuer seed, the token key's public half (never its seed) and the system user."""
    keys = read_keys_file(path)
    passwords = keys.get("passwords", {})
    return dataclasses.replace(
        settings,
        auth_issuer_seed=settings.auth_issuer_seed or str(keys.get("issuer_seed", "")),
        auth_token_public_key=settings.auth_token_public_key or public_key(str(keys.get("token_seed", ""))),
        auth_sys_user=settings.auth_sys_user or SYSTEM_USER,
        auth_sys_password=settings.auth_sys_password or str(passwords.get(SYSTEM_USER, "")),
    )


def main() -> None:
    settings = AuthSettings.from_env()
    if os.environ.get(ENV_KEYS_FILE) and not settings.auth_issuer_seed:
        settings = with_keys_file(settings, os.environ[ENV_KEYS_FILE])
    service_main("auth", settings, lambda ctx: AuthHandlers(ctx, settings))


if __name__ == "__main__":
    main()
