"""Session tokens: minted with the token key's seed, verified with its public key (pure).

Format ``cht1.<claims>.<signature>``: base64url JSON claims (``shared.auth.TokenClaims``) and an
ed25519 signature over ``cht1.<claims>``. Why not a JWT library: the token is a bearer credential
read by one verifier of ours; a fixed, versioned shape with one algorithm leaves nothing to
negotiate (no ``alg`` header to downgrade).
"""

from __future__ import annotations

import math
import secrets
import time

import nacl.exceptions
import nkeys

from services.auth.keys import KeysError, keypair, verify_key
from shared.auth import TOKEN_SCHEME, TokenClaims, TokenFormatError, b64url, split_token
from shared.subjects import validate_session_id

DEFAULT_TTL_S = 3600.0
MAX_TTL_S = 7 * 24 * 3600.0  # a revocation is kept this long: no token outlives it


class TokenError(ValueError):
    """A token the auth service refuses; the message is the reason, safe to send back."""


def mint(token_seed: str, session_id: str, ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> str:
    """A token for ``session_id`` valid for ``ttl_s`` seconds (at most ``MAX_TTL_S``)."""
    validate_session_id(session_id)
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"token ttl must be within (0, {MAX_TTL_S:g}] seconds, not {ttl_s:g}")
    now = time.time() if now is None else now
    claims = TokenClaims(session_id, round(now, 3), math.ceil(now + ttl_s), secrets.token_hex(8))
    signed = f"{TOKEN_SCHEME}.{b64url(claims.encode())}"
    return f"{signed}.{b64url(keypair(token_seed).sign(signed.encode()))}"


def verify(token_public: str, token: str, now: float | None = None) -> TokenClaims:
    """The claims of a genuine, unexpired token; ``TokenError`` otherwise."""
    try:
        signed, claims, signature = split_token(token)
    except TokenFormatError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    try:
        verify_key(token_public, nkeys.PREFIX_BYTE_OPERATOR).verify(signed.encode(), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, KeysError):
        raise TokenError("bad token signature") from None
    now = time.time() if now is None else now
    if claims.expires_at <= now:
        raise TokenError("token expired")
    if claims.expires_at - claims.issued_at > MAX_TTL_S + 1:
        raise TokenError("token lifetime too long")
    return claims
