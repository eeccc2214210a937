"""Session tokens and the nkey helpers they are signed with (pure): shared because more than one
process mints tokens (``chameleon session create``, the web page's session endpoint) while only the
auth service verifies them.

Format ``cht1.<claims>.<signature>``: base64url JSON claims (``shared.auth.TokenClaims``) and an
ed25519 signature over ``cht1.<claims>``. Why not a JWT library: the token is a bearer credential
read by one verifier of ours; a fixed, versioned shape with one algorithm leaves nothing to
negotiate (no ``alg`` header to downgrade).
"""

from __future__ import annotations

import base64
import math
import os
import secrets
import time

import nacl.exceptions
import nacl.signing
import nkeys

from shared.auth import TOKEN_SCHEME, TokenClaims, TokenFormatError, b64url, split_token
from shared.subjects import validate_session_id


class KeysError(ValueError):
    """A malformed nkey, seed or keys file."""


def new_seed(prefix: int) -> str:
    """A fresh nkey seed of role ``prefix`` (``nkeys.PREFIX_BYTE_ACCOUNT`` …)."""
    return nkeys.encode_seed(os.urandom(32), prefix).decode()


def keypair(seed: str) -> nkeys.KeyPair:
    try:
        return nkeys.from_seed(seed.encode())
    except (nkeys.NkeysError, ValueError) as exc:
        raise KeysError(f"bad nkey seed: {exc}") from None


def public_key(seed: str) -> str:
    return keypair(seed).public_key.decode()


def verify_key(public: str, prefix: int | None = None) -> nacl.signing.VerifyKey:
    """The ed25519 key of an encoded public nkey, its role and checksum checked (nkeys 0.2 can sign
    and verify only with a seed in hand)."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (ValueError, TypeError) as exc:
        raise KeysError(f"bad public nkey: {exc}") from None
    if len(raw) != 35:
        raise KeysError("bad public nkey: wrong length")
    body, crc = raw[:-2], raw[-2:]
    if nkeys.crc16_checksum(body) != crc:
        raise KeysError("bad public nkey: checksum")
    if prefix is not None and body[0] != prefix:
        raise KeysError("public nkey of the wrong role")
    return nacl.signing.VerifyKey(bytes(body[1:]))


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
