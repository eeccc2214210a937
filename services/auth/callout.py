"""The auth callout's two JWTs, read and written with ``nkeys`` alone (pure).

nats-server sends each connect attempt to ``$SYS.REQ.USER.AUTH`` as a JWT signed by the server's
own nkey; the reply is an authorization response JWT signed by the issuer account nkey, carrying
either an error or a user JWT (same signer) with the permissions the server then enforces for
that connection. ``nats-jwt`` 0.2 has no callout claims, and both JWTs are small: header
``{"typ":"JWT","alg":"ed25519-nkey"}``, base64url claims, ed25519 signature over ``header.claims``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nkeys

from shared.auth import Permissions, TokenFormatError, b64url, b64url_decode
from shared.tokens import KeysError, verify_key

JWT_HEADER = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
NO_LIMIT = -1


class CalloutError(ValueError):
    """A callout request that is not a genuine one from a server."""


@dataclass(frozen=True)
class AuthRequest:
    """What the auth service needs of one connect attempt."""

    user_nkey: str  # the server-made identity the user JWT must name
    server_id: str  # the response's audience, and where a kick goes
    client_id: int  # the connection's cid on that server
    token: str  # the client's ``token=`` (``connect_opts.auth_token``)
    client_name: str
    host: str


def _jti(claims: dict[str, Any]) -> str:
    """The claims' id as nats-jwt makes it: SHA-512/256 of the claims without ``jti``, base32."""
    body = json.dumps({k: v for k, v in claims.items() if k != "jti"}, separators=(",", ":")).encode()
    return base64.b32encode(hashlib.new("sha512_256", body).digest()).decode().rstrip("=")


def encode_jwt(claims: dict[str, Any], signer: nkeys.KeyPair, now: float | None = None) -> str:
    """A JWT of ``claims`` issued and signed by ``signer``."""
    claims = {**claims, "iat": int(time.time() if now is None else now), "iss": signer.public_key.decode()}
    claims["jti"] = _jti(claims)
    signed = f"{JWT_HEADER}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signed}.{b64url(signer.sign(signed.encode()))}"


def decode_jwt(token: str, signer_prefix: int | None = None) -> dict[str, Any]:
    """The claims of a JWT whose signature verifies against its own ``iss`` (of role
    ``signer_prefix`` when given)."""
    try:
        header, body, signature = token.strip().split(".")
        claims = json.loads(b64url_decode(body))
        if json.loads(b64url_decode(header)).get("alg") != "ed25519-nkey":
            raise CalloutError("JWT algorithm is not ed25519-nkey")
        verify_key(str(claims["iss"]), signer_prefix).verify(
            f"{header}.{body}".encode(), b64url_decode(signature)
        )
    except CalloutError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, TokenFormatError, KeysError) as exc:
        raise CalloutError(f"malformed JWT: {exc}") from None
    except nacl.exceptions.BadSignatureError:
        raise CalloutError("JWT signature does not verify") from None
    if not isinstance(claims, dict):
        raise CalloutError("JWT claims are not an object")
    return claims


def decode_request(data: bytes) -> AuthRequest:
    """A callout request, its server signature checked."""
    try:
        claims = decode_jwt(data.decode(), nkeys.PREFIX_BYTE_SERVER)
    except UnicodeDecodeError:
        raise CalloutError("callout request is not text (an encrypted request?)") from None
    nats = claims.get("nats") or {}
    try:
        if nats.get("type") != "authorization_request":
            raise CalloutError(f"not an authorization request: {nats.get('type')!r}")
        info = nats.get("client_info") or {}
        opts = nats.get("connect_opts") or {}
        return AuthRequest(
            user_nkey=str(nats["user_nkey"]),
            server_id=str(nats["server_id"]["id"]),
            client_id=int(info.get("id", 0)),
            token=str(opts.get("auth_token") or ""),
            client_name=str(info.get("name") or opts.get("name") or ""),
            host=str(info.get("host") or ""),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CalloutError(f"malformed authorization request: {exc}") from None


def user_jwt(
    issuer: nkeys.KeyPair,
    request: AuthRequest,
    account: str,
    name: str,
    permissions: Permissions,
    expires_at: int,
    max_payload: int = NO_LIMIT,
    max_subscriptions: int = NO_LIMIT,
    now: float | None = None,
) -> str:
    """The user JWT placing the connection in ``account`` with ``permissions`` until ``expires_at``
    (the server disconnects it then). The payload and subscription limits are written too, but
    nats-server 2.15 applies the account's limits to callout users, not these (docs/security.md)."""
    claims = {
        "sub": request.user_nkey,
        "aud": account,
        "name": name,
        "exp": int(expires_at),
        "nats": {
            "pub": {"allow": list(permissions.publish)},
            "sub": {"allow": list(permissions.subscribe)},
            "subs": max_subscriptions,
            "data": NO_LIMIT,
            "payload": max_payload,
            "type": "user",
            "version": 2,
        },
    }
    return encode_jwt(claims, issuer, now)


def response_jwt(
    issuer: nkeys.KeyPair, request: AuthRequest, *, jwt: str = "", error: str = "", now: float | None = None
) -> bytes:
    """The authorization response: ``jwt`` admits the connection, ``error`` refuses it."""
    if bool(jwt) == bool(error):
        raise ValueError("a response carries either a user JWT or an error")
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    nats.update({"jwt": jwt} if jwt else {"error": error})
    claims = {"sub": request.user_nkey, "aud": request.server_id, "nats": nats}
    return encode_jwt(claims, issuer, now).encode()
