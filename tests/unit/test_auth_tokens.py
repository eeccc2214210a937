"""Session tokens, the callout's JWTs, the permission builders and the auth service's decisions,
without a server: what a token opens, what a forged, tampered or expired one gets, and that no
permission list reaches past its session or service."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nkeys
import pytest

from services.auth.authorizer import Authorizer, ConnectionLimits
from services.auth.callout import (
    CalloutError,
    decode_jwt,
    decode_request,
    encode_jwt,
    response_jwt,
    user_jwt,
)
from services.auth.keys import USERS, AuthKeys
from services.auth.permissions import explain_permissions, session_permissions
from shared.auth import (
    SERVICE_ROLES,
    NatsCredentials,
    TokenClaims,
    b64url,
    read_token,
    service_permissions,
    session_inbox_prefix,
)
from shared.subjects import Subjects
from shared.tokens import MAX_TTL_S, TokenError, keypair, mint, new_seed, verify

pytestmark = pytest.mark.unit
S = Subjects()
NOW = 1_800_000_000.0


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def allowed(patterns: tuple[str, ...], subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


@pytest.fixture(scope="module")
def keys() -> AuthKeys:
    return AuthKeys.generate()


# -- tokens ------------------------------------------------------------------------------------------
def test_a_minted_token_verifies_and_names_its_session(keys: AuthKeys) -> None:
    token = mint(keys.token_seed, "alice", ttl_s=60, now=NOW)
    claims = verify(keys.token_public, token, now=NOW + 30)
    assert claims.session_id == "alice"
    assert claims.issued_at == NOW and claims.expires_at == NOW + 60
    assert read_token(token) == claims  # what a client reads without the key
    assert mint(keys.token_seed, "alice", 60, NOW) != token  # each token has its own id


def test_an_expired_token_is_refused(keys: AuthKeys) -> None:
    token = mint(keys.token_seed, "alice", ttl_s=60, now=NOW)
    with pytest.raises(TokenError, match="expired"):
        verify(keys.token_public, token, now=NOW + 60)


def test_a_token_signed_by_another_key_is_refused(keys: AuthKeys) -> None:
    other = AuthKeys.generate()
    with pytest.raises(TokenError, match="signature"):
        verify(keys.token_public, mint(other.token_seed, "alice", 60, NOW), now=NOW)


def test_a_tampered_token_is_refused(keys: AuthKeys) -> None:
    """Re-pointing a genuine token at another session breaks its signature."""
    scheme, _claims, signature = mint(keys.token_seed, "alice", 60, NOW).split(".")
    forged = TokenClaims("bob", NOW, int(NOW) + 60, "0" * 16)
    with pytest.raises(TokenError, match="signature"):
        verify(keys.token_public, f"{scheme}.{b64url(forged.encode())}.{signature}", now=NOW)


@pytest.mark.parametrize("junk", ["", "x", "cht1.a.b", "cht2.e30.AA", "a.b.c.d", "eyJ0eXAiOiJKV1QifQ.e30.AA"])
def test_malformed_tokens_are_refused(keys: AuthKeys, junk: str) -> None:
    with pytest.raises(TokenError):
        verify(keys.token_public, junk, now=NOW)


def test_token_lifetime_is_bounded(keys: AuthKeys) -> None:
    with pytest.raises(ValueError):
        mint(keys.token_seed, "alice", ttl_s=MAX_TTL_S + 1)
    with pytest.raises(ValueError):
        mint(keys.token_seed, "alice", ttl_s=0)
    with pytest.raises(ValueError):
        mint(keys.token_seed, "no.dots", ttl_s=10)
    # a token signed by the right key but living past the bound (a stolen seed's forgery) is refused
    claims = TokenClaims("alice", NOW, int(NOW + 2 * MAX_TTL_S), "f" * 16)
    signed = f"cht1.{b64url(claims.encode())}"
    token = f"{signed}.{b64url(keypair(keys.token_seed).sign(signed.encode()))}"
    with pytest.raises(TokenError, match="too long"):
        verify(keys.token_public, token, now=NOW)


def test_credentials_give_a_token_client_its_session_inbox(keys: AuthKeys) -> None:
    token = mint(keys.token_seed, "alice", 60)
    opts = NatsCredentials(token=token).connect_options()
    assert opts == {"token": token, "inbox_prefix": session_inbox_prefix("alice")}
    assert NatsCredentials(user="ingest", password="pw").connect_options() == {
        "user": "ingest",
        "password": "pw",
    }
    assert NatsCredentials().connect_options() == {}
    env = {"CHAMELEON_NATS_USER": "ingest", "CHAMELEON_NATS_PASSWORD": "pw"}
    assert NatsCredentials.from_env(env) == NatsCredentials("ingest", "pw")
    assert "pw" not in repr(NatsCredentials("ingest", "pw", token))


# -- permissions ---------------------------------------------------------------------------------------
def test_a_session_may_use_exactly_its_own_subjects() -> None:
    perms = session_permissions(S, "alice")
    for subject in (
        S.camera("alice"),
        S.feedback("alice"),
        S.control("alice"),
        S.garments("list"),
        S.garments("get"),
    ):
        assert allowed(perms.publish, subject), subject
    for subject in (S.output("alice"), S.events("alice"), f"{session_inbox_prefix('alice')}.x.1"):
        assert allowed(perms.subscribe, subject), subject
    denied_pub = [
        S.camera("bob"),
        S.feedback("bob"),
        S.control("bob"),
        S.output("alice"),  # only services publish output and events
        S.events("alice"),
        S.ingested("alice"),
        S.conditioning("alice"),
        S.garments("encode"),
        "$JS.API.STREAM.INFO.CHAMELEON_CONTROL",
        "$JS.API.STREAM.CREATE.CHAMELEON_CONTROL",
        "$JS.API.CONSUMER.CREATE.CHAMELEON_CONTROL",
        f"$KV.{S.garment_bucket}.x",
        f"$O.{S.garment_objects}.x",
        "$SYS.REQ.USER.AUTH",
    ]
    for subject in denied_pub:
        assert not allowed(perms.publish, subject), subject
    for subject in (S.output("bob"), S.events("bob"), S.camera("alice"), "_INBOX.x", "_INBOX_SESSION.bob.x"):
        assert not allowed(perms.subscribe, subject), subject
    assert not any(
        p.startswith((">", "*")) or p.startswith("chameleon.*") for p in perms.publish + perms.subscribe
    )


def test_only_the_garment_service_writes_the_garment_store_and_no_service_deletes_a_stream() -> None:
    writes = [f"$KV.{S.garment_bucket}.garment.x", f"$O.{S.garment_objects}.x"]
    for role in SERVICE_ROLES:
        pub = service_permissions(role, S).publish
        assert not any("DELETE" in p and "STREAM" in p and "MSG" not in p for p in pub), role
        assert not allowed(pub, "$JS.API.STREAM.DELETE.KV_CHAMELEON_SESSIONS"), role
        assert ">" not in pub and "$JS.API.>" not in pub, role
        for subject in writes:
            assert allowed(pub, subject) == (role == "garments"), (role, subject)
    generator = service_permissions("generator", S).publish
    assert allowed(generator, f"$KV.{S.session_bucket}.alice")
    assert allowed(generator, f"$JS.API.STREAM.PURGE.{S.control_stream}")  # stop purges a session
    assert not allowed(generator, f"$JS.API.STREAM.PURGE.KV_{S.garment_bucket}")
    assert not allowed(service_permissions("ingest", S).publish, S.output("alice"))
    with pytest.raises(ValueError):
        service_permissions("nobody", S)


def test_the_server_config_has_the_callout_users_and_session_limits(keys: AuthKeys) -> None:
    text = "\n".join(keys.server_auth(S).config_lines())
    assert f'issuer: "{keys.issuer_public}"' in text
    for user in USERS:
        assert f'{{user: "{user}", password: "{keys.passwords[user]}"' in text
    assert "limits: {max_payload: 2097152, max_subscriptions: 16" in text
    # the auth service publishes replies, into its own revocation bucket and to the control
    # stream's API (its durable consumer of the stops): nothing else, no session's subjects
    auth_publish = service_permissions("auth", S).publish
    js_info = ("$JS.API.INFO", "$JS.API.STREAM.NAMES")
    ours = (S.revocation_bucket, S.control_stream)
    assert auth_publish and all(any(o in p for o in ours) or p in js_info for p in auth_publish), auth_publish
    assert not any(p.startswith(S.prefix) for p in auth_publish)
    assert "system_account: SYS" in text and "account: APP" in text
    # a refused client may ask why, in an account of its own that can reach nothing else
    assert 'imports: [{service: {account: APP, subject: "_CHAMELEON.auth.explain"}, share: true}]' in text


# -- the callout ---------------------------------------------------------------------------------------
def _request(server: nkeys.KeyPair, token: str, cid: int = 7) -> bytes:
    claims = {
        "sub": "ACCOUNT",
        "aud": "nats-authorization-request",
        "nats": {
            "type": "authorization_request",
            "version": 2,
            "user_nkey": "UNEWUSER",
            "server_id": {"id": "NSERVERID", "name": "n1"},
            "client_info": {"id": cid, "host": "127.0.0.1", "name": "cam"},
            "connect_opts": {"auth_token": token},
        },
    }
    return encode_jwt(claims, server).encode()


def test_a_callout_request_is_read_and_answered(keys: AuthKeys) -> None:
    server = keypair(new_seed(nkeys.PREFIX_BYTE_SERVER))
    request = decode_request(_request(server, "tok"))
    assert (request.user_nkey, request.server_id, request.client_id, request.token) == (
        "UNEWUSER",
        "NSERVERID",
        7,
        "tok",
    )
    issuer = keypair(keys.issuer_seed)
    user = user_jwt(
        issuer, request, "CLIENTS", "session:alice", session_permissions(S, "alice"), int(NOW) + 60
    )
    claims = decode_jwt(user, nkeys.PREFIX_BYTE_ACCOUNT)
    assert claims["iss"] == keys.issuer_public and claims["sub"] == "UNEWUSER" and claims["aud"] == "CLIENTS"
    assert claims["exp"] == int(NOW) + 60
    assert claims["nats"]["pub"]["allow"] == list(session_permissions(S, "alice").publish)
    reply = decode_jwt(response_jwt(issuer, request, jwt=user).decode())
    assert reply["aud"] == "NSERVERID" and reply["sub"] == "UNEWUSER" and reply["nats"]["jwt"] == user
    refusal = decode_jwt(response_jwt(issuer, request, error="token expired").decode())
    assert refusal["nats"]["error"] == "token expired" and "jwt" not in refusal["nats"]


def test_a_forged_callout_request_is_rejected() -> None:
    server = keypair(new_seed(nkeys.PREFIX_BYTE_SERVER))
    header, body, _sig = _request(server, "tok").decode().split(".")
    other = keypair(new_seed(nkeys.PREFIX_BYTE_SERVER)).sign(f"{header}.{body}".encode())
    with pytest.raises(CalloutError, match="signature"):
        decode_request(f"{header}.{body}.{b64url(other)}".encode())
    account = keypair(new_seed(nkeys.PREFIX_BYTE_ACCOUNT))  # signed, but not by a server key
    with pytest.raises(CalloutError):
        decode_request(_request(account, "tok"))
    with pytest.raises(CalloutError):
        decode_request(b"\xff\xfe")


# -- decisions ----------------------------------------------------------------------------------------
def test_a_stopped_session_refuses_its_old_tokens_and_accepts_new_ones(keys: AuthKeys) -> None:
    auth = Authorizer(keys.token_public)
    old = mint(keys.token_seed, "alice", 60, NOW)
    bob = mint(keys.token_seed, "bob", 60, NOW)
    claims = auth.authorize(old, NOW + 1)
    auth.admitted(claims, "NSERVER", 11, NOW + 1)
    auth.admitted(claims, "NSERVER", 12, NOW + 1)
    kicked = auth.revoke("alice", NOW + 2)
    assert [(c.server_id, c.client_id) for c in kicked] == [("NSERVER", 11), ("NSERVER", 12)]
    with pytest.raises(TokenError, match="stopped"):
        auth.authorize(old, NOW + 3)
    auth.authorize(bob, NOW + 3)  # another session is untouched
    fresh = mint(keys.token_seed, "alice", 60, NOW + 2.5)  # minted after the stop, same second
    assert auth.authorize(fresh, NOW + 3).session_id == "alice"
    assert auth.revoke("alice", NOW + 4) == []  # nothing admitted since
    assert auth.refused_total == 1
    with pytest.raises(TokenError, match="no token"):
        auth.authorize("", NOW)


def test_admitted_connections_are_forgotten_once_expired(keys: AuthKeys) -> None:
    auth = Authorizer(keys.token_public)
    short = auth.authorize(mint(keys.token_seed, "alice", 5, NOW), NOW)
    auth.admitted(short, "N", 1, NOW)
    auth.admitted(auth.authorize(mint(keys.token_seed, "alice", 60, NOW), NOW), "N", 2, NOW + 10)
    assert [c.client_id for c in auth.connections["alice"]] == [2]


# -- keys ---------------------------------------------------------------------------------------------
def test_keys_are_made_once_kept_private_and_completed(tmp_path: Path) -> None:
    path = tmp_path / "d" / "auth-keys.json"
    first = AuthKeys.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert AuthKeys.load_or_create(path) == first
    body = json.loads(path.read_text())
    del body["passwords"]["generator"]
    path.write_text(json.dumps(body))
    again = AuthKeys.load_or_create(path)
    assert again.passwords["generator"] and again.passwords["ingest"] == first.passwords["ingest"]
    assert again.issuer_public.startswith("A") and again.token_public.startswith("O")


# -- the launcher ---------------------------------------------------------------------------------
def test_a_secure_stack_gives_each_child_its_own_user_and_never_a_session_token(
    keys: AuthKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.stack import Stack

    monkeypatch.setenv("CHAMELEON_TOKEN", mint(keys.token_seed, "alice", 60))
    secure = Stack(["ingest", "generator"], secure=True, keys=keys)
    ingest = secure._child_env("ingest", "ingest-1", 1)
    assert (ingest["CHAMELEON_NATS_USER"], ingest["CHAMELEON_NATS_PASSWORD"]) == (
        "ingest",
        keys.passwords["ingest"],
    )
    assert ingest["CHAMELEON_TOKEN"] == "" and "CHAMELEON_AUTH_ISSUER_SEED" not in ingest
    auth = secure._child_env("auth", "auth-1", 1)
    assert auth["CHAMELEON_NATS_USER"] == "auth" and auth["CHAMELEON_AUTH_ISSUER_SEED"] == keys.issuer_seed
    assert auth["CHAMELEON_AUTH_TOKEN_PUBLIC_KEY"] == keys.token_public
    assert secure.admin_credentials == keys.credentials("admin")
    assert read_token(secure.session_credentials("bob").token).session_id == "bob"
    open_stack = Stack(["ingest"])
    assert open_stack._child_env("ingest", "ingest-1", 1)["CHAMELEON_TOKEN"] == ""
    assert open_stack.admin_credentials is None and open_stack.session_credentials("bob") is None


def test_a_stop_learned_late_kicks_only_the_tokens_it_covers(keys: AuthKeys) -> None:
    """A stop applied after the fact (from the control stream after a restart, or from another
    replica) carries its own time: a connection on a token minted after it stays, and an earlier
    stop never undoes a later one."""
    auth = Authorizer(keys.token_public)
    before = auth.authorize(mint(keys.token_seed, "alice", 60, NOW), NOW)
    after = auth.authorize(mint(keys.token_seed, "alice", 60, NOW + 5), NOW + 5)
    auth.admitted(before, "N", 1, NOW)
    auth.admitted(after, "N", 2, NOW + 5)
    assert [c.client_id for c in auth.revoke("alice", NOW + 2)] == [1]  # heard at NOW + 6
    assert [c.client_id for c in auth.connections["alice"]] == [2]
    auth.revoke("alice", NOW + 1)  # an earlier stop, heard later still
    assert auth.revoked["alice"] == NOW + 2
    assert auth.authorize(mint(keys.token_seed, "alice", 60, NOW + 3), NOW + 6).session_id == "alice"


# -- connection limits --------------------------------------------------------------------------------
def test_a_session_and_an_address_hold_at_most_their_share_of_live_connections(keys: AuthKeys) -> None:
    auth = Authorizer(keys.token_public, ConnectionLimits(per_session=2, per_address=3))
    alice = mint(keys.token_seed, "alice", 60, NOW)
    for cid in (1, 2):
        auth.admitted(auth.authorize(alice, NOW, "10.0.0.1"), "N", cid, NOW, "10.0.0.1")
        auth.connected("N", cid)
    with pytest.raises(TokenError, match="session alice already has 2 connections"):
        auth.authorize(alice, NOW, "10.0.0.2")  # per session, from any address
    bob = mint(keys.token_seed, "bob", 60, NOW)
    auth.admitted(auth.authorize(bob, NOW, "10.0.0.1"), "N", 3, NOW, "10.0.0.1")
    with pytest.raises(TokenError, match=r"address 10\.0\.0\.1 already has 3 connections"):
        auth.authorize(mint(keys.token_seed, "carol", 60, NOW), NOW, "10.0.0.1")
    auth.authorize(mint(keys.token_seed, "carol", 60, NOW), NOW, "10.0.0.2")  # another address
    assert auth.disconnected("N", 1) is not None  # the server's disconnect event frees a place
    auth.admitted(auth.authorize(alice, NOW, "10.0.0.2"), "N", 4, NOW, "10.0.0.2")
    assert auth.refused_for_limits == {"session": 1, "address": 1}
    assert "already has 2 connections" in auth.explain(alice, NOW, "10.0.0.9")
    assert auth.refused_for_limits == {"session": 1, "address": 1}  # asking why is not a refusal


def test_an_admission_the_server_never_confirms_stops_counting(keys: AuthKeys) -> None:
    """The server may still refuse a client after the callout admitted it (its account is full):
    no connect event then, nor a disconnect one; the place is given back after ``confirm_s``."""
    auth = Authorizer(keys.token_public, ConnectionLimits(per_session=1, confirm_s=5.0))
    alice = mint(keys.token_seed, "alice", 60, NOW)
    auth.admitted(auth.authorize(alice, NOW), "N", 1, NOW)
    with pytest.raises(TokenError):
        auth.authorize(alice, NOW + 4)
    auth.admitted(auth.authorize(alice, NOW + 6), "N", 2, NOW + 6)
    assert auth.connected("N", 2)
    with pytest.raises(TokenError):
        auth.authorize(alice, NOW + 60)  # confirmed: it counts until it leaves


def test_a_refused_client_may_ask_why_a_few_times_per_address(keys: AuthKeys) -> None:
    auth = Authorizer(keys.token_public, ConnectionLimits())
    for cid in range(4):
        auth.admit_explain("N", cid, "10.0.0.1", NOW, int(NOW) + 10)
    with pytest.raises(TokenError, match="explain connections"):
        auth.admit_explain("N", 9, "10.0.0.1", NOW, int(NOW) + 10)
    auth.admit_explain("N", 10, "10.0.0.2", NOW, int(NOW) + 10)
    auth.disconnected("N", 0)
    auth.admit_explain("N", 11, "10.0.0.1", NOW, int(NOW) + 10)
    other = AuthKeys.generate()
    assert auth.explain(mint(other.token_seed, "x", 60, NOW), NOW) == (
        f"bad token signature: this deployment's token key is {keys.token_public}"
    )
    assert auth.explain(mint(keys.token_seed, "x", 60, NOW), NOW) == ""
    with pytest.raises(ValueError):
        explain_permissions("short")
    assert explain_permissions("abcdef0123456789").subscribe == ("_INBOX_EXPLAIN.abcdef0123456789.>",)
