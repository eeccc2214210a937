"""Auth service settings (``CHAMELEON_*``). ``chameleon up`` fills them from its keys file."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.settings import BaseSettings
from shared.auth import CLIENT_ACCOUNT


@dataclass(frozen=True)
class AuthSettings(BaseSettings):
    # account nkey seed whose public key is the server's auth_callout issuer: signs user JWTs
    auth_issuer_seed: str = field(default="", repr=False)
    auth_token_public_key: str = ""  # verifies session tokens (the seed stays with whoever mints)
    auth_sys_user: str = ""  # system-account user that kicks a stopped session's clients; empty: no kicks
    auth_sys_password: str = field(default="", repr=False)
    auth_client_account: str = CLIENT_ACCOUNT  # where session clients are placed
    auth_kick_timeout_s: float = 2.0
    # live connections one session token / one client address may hold (0: no limit); counted by
    # this service from the server's connect and disconnect events (needs the system user)
    max_connections_per_session: int = 4
    max_connections_per_address: int = 64
