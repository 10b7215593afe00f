"""Passkeys (WebAuthn) against the real binary: `/v1/auth/passkey/...`.

The authenticator is a software one built on the `fido2` package's WebAuthn
data types (authenticator data, attestation objects, COSE keys, client data)
and `cryptography`'s P-256 keys, so the bytes the server checks come from an
independent implementation, not from the server's own library. It plays
both the authenticator and the browser: it writes the client data with the
origin it is given, as a browser would with the page's origin.

Then once in headless Chromium with the DevTools virtual authenticator,
driving the built-in page: register, sign in, and connected as that user.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.webauthn import (
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorData,
    CollectedClientData,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cdp import CHROMIUM, Browser  # noqa: E402
from conftest import base_env  # noqa: E402
from helpers import assert_json_error  # noqa: E402

RP_ID = "localhost"
BASE = "/v1/auth/passkey"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """A platform authenticator with user verification, resident keys and a
    sign counter per credential (bumped on each assertion)."""

    def __init__(self, origin: str, rp_id: str = RP_ID):
        self.origin = origin
        self.rp_id = rp_id
        # credential id -> {"key", "user", "counter"}
        self.creds: dict[bytes, dict] = {}

    def create(self, options: dict, origin: str | None = None) -> dict:
        pk = options["publicKey"]
        assert pk["rp"]["id"] == self.rp_id, pk["rp"]
        assert any(p["alg"] == -7 for p in pk["pubKeyCredParams"]), pk["pubKeyCredParams"]
        excluded = {unb64(c["id"]) for c in pk.get("excludeCredentials") or []}
        assert not excluded & set(self.creds), "asked to register a credential twice"
        key = ec.generate_private_key(ec.SECP256R1())
        cred_id = os.urandom(32)
        self.creds[cred_id] = {"key": key, "user": unb64(pk["user"]["id"]), "counter": 0}
        acd = AttestedCredentialData.create(b"\0" * 16, cred_id, ES256.from_cryptography_key(key.public_key()))
        flags = AuthenticatorData.FLAG.UP | AuthenticatorData.FLAG.UV | AuthenticatorData.FLAG.AT
        auth_data = AuthenticatorData.create(self._rp_hash(), flags, 0, bytes(acd))
        att = AttestationObject.create("none", auth_data, {})
        client = CollectedClientData.create("webauthn.create", unb64(pk["challenge"]), origin or self.origin)
        return {
            "id": b64(cred_id),
            "rawId": b64(cred_id),
            "type": "public-key",
            "response": {"attestationObject": b64(bytes(att)), "clientDataJSON": b64(bytes(client))},
            "extensions": {},
        }

    def get(self, options: dict, origin: str | None = None, cred_id: bytes | None = None) -> dict:
        pk = options["publicKey"]
        assert pk["rpId"] == self.rp_id, pk
        if cred_id is None:
            allowed = [unb64(c["id"]) for c in pk.get("allowCredentials") or []]
            # No list: a discoverable sign-in, which any resident key answers.
            cred_id = next(c for c in (allowed or list(self.creds)) if c in self.creds)
        cred = self.creds[cred_id]
        cred["counter"] += 1
        flags = AuthenticatorData.FLAG.UP | AuthenticatorData.FLAG.UV
        auth_data = bytes(AuthenticatorData.create(self._rp_hash(), flags, cred["counter"]))
        client = CollectedClientData.create("webauthn.get", unb64(pk["challenge"]), origin or self.origin)
        sig = cred["key"].sign(auth_data + client.hash, ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64(cred_id),
            "rawId": b64(cred_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(auth_data),
                "clientDataJSON": b64(bytes(client)),
                "signature": b64(sig),
                "userHandle": b64(cred["user"]),
            },
            "extensions": {},
        }

    def _rp_hash(self) -> bytes:
        return hashlib.sha256(self.rp_id.encode()).digest()


def post(server, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = b"" if body is None else json.dumps(body).encode()
    return server.request("POST", BASE + path, body=data, headers=headers)


def ok(resp):
    assert resp.status == 200, resp
    assert resp.header("cache-control") == "no-store", resp
    return resp.json()


def register(server, auth, username=None, token=None):
    start = ok(post(server, "/register/start", {"username": username} if username else None, token=token))
    cred = auth.create(start["options"])
    return start, cred, post(server, "/register/finish", {"ceremony": start["ceremony"], "credential": cred})


def login_start(server, username=None):
    return ok(post(server, "/login/start", {"username": username} if username else {}))


def login(server, auth, username=None):
    start = login_start(server, username)
    cred = auth.get(start["options"])
    return post(server, "/login/finish", {"ceremony": start["ceremony"], "credential": cred})


def assert_connects_as(server, tokens, user, room):
    """The access token opens a WebSocket, and the server knows it as `user`."""
    assert tokens["token_type"] == "Bearer" and tokens["user"] == user, tokens
    c = server.ws(user=None, token=tokens["access_token"])
    try:
        c.join(room)
        reply = c.call("send", room=room, body={"text": "hi"}, id="m-" + uuid.uuid4().hex[:8])
        assert reply.get("op") == "ack", reply
        msg = c.wait(op="msg", room=room)
        assert msg["from"] == user, msg
    finally:
        c.close()


def new_name(prefix="pk"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def pk_server(module_servers):
    """A server whose passkey origin is `http://localhost:PORT` (the default for rp id localhost)."""
    return module_servers("--send-rate", "0")


@pytest.fixture
def auth(pk_server):
    return SoftAuthenticator(f"http://localhost:{pk_server.port}")


def test_register_sign_in_and_connect(pk_server, auth, room):
    name = new_name()
    start, _, finish = register(pk_server, auth, name)
    assert len(start["ceremony"]) == 32 and start["expires_in"] == 300, start
    opts = start["options"]["publicKey"]
    assert opts["user"]["name"] == name and opts["authenticatorSelection"]["userVerification"] == "required", opts
    assert_connects_as(pk_server, ok(finish), name, room)

    login_opts = login_start(pk_server, name)["options"]["publicKey"]
    assert [c["id"] for c in login_opts["allowCredentials"]] == [b64(c) for c in auth.creds], login_opts
    tokens = ok(login(pk_server, auth, name))
    assert_connects_as(pk_server, tokens, name, room)


def test_discoverable_sign_in_without_a_name(pk_server, auth, room):
    name = new_name()
    ok(register(pk_server, auth, name)[2])
    start = login_start(pk_server)
    assert not start["options"]["publicKey"].get("allowCredentials"), start
    assert "mediation" not in start["options"], start
    cred = auth.get(start["options"])
    tokens = ok(post(pk_server, "/login/finish", {"ceremony": start["ceremony"], "credential": cred}))
    assert_connects_as(pk_server, tokens, name, room)


def test_a_replayed_register_finish_is_refused(pk_server, auth):
    name = new_name()
    start, cred, first = register(pk_server, auth, name)
    ok(first)
    again = post(pk_server, "/register/finish", {"ceremony": start["ceremony"], "credential": cred})
    assert_json_error(again, 400, "invalid_ceremony")


def test_a_replayed_login_finish_is_refused(pk_server, auth):
    name = new_name()
    ok(register(pk_server, auth, name)[2])
    start = login_start(pk_server, name)
    cred = auth.get(start["options"])
    body = {"ceremony": start["ceremony"], "credential": cred}
    ok(post(pk_server, "/login/finish", body))
    assert_json_error(post(pk_server, "/login/finish", body), 400, "invalid_ceremony")


def test_a_login_finish_with_another_ceremonys_id_fails(pk_server, auth):
    name = new_name()
    ok(register(pk_server, auth, name)[2])
    a = login_start(pk_server, name)
    b = login_start(pk_server, name)
    signed_for_a = auth.get(a["options"])
    # B's challenge is not the one signed: refused, and B is spent by trying.
    assert_json_error(post(pk_server, "/login/finish", {"ceremony": b["ceremony"], "credential": signed_for_a}),
                      401, "passkey_refused")
    signed_for_b = auth.get(b["options"])
    assert_json_error(post(pk_server, "/login/finish", {"ceremony": b["ceremony"], "credential": signed_for_b}),
                      400, "invalid_ceremony")
    # A registration ceremony does not finish a sign-in either.
    reg = ok(post(pk_server, "/register/start", {"username": new_name()}))
    assert_json_error(post(pk_server, "/login/finish", {"ceremony": reg["ceremony"], "credential": signed_for_a}),
                      400, "invalid_ceremony")
    # A is untouched by all that and still works once.
    ok(post(pk_server, "/login/finish", {"ceremony": a["ceremony"], "credential": signed_for_a}))


def test_a_sign_counter_that_goes_backwards_is_refused(pk_server, auth):
    name = new_name()
    ok(register(pk_server, auth, name)[2])
    ok(login(pk_server, auth, name))
    ok(login(pk_server, auth, name))
    # A clone of the key would still count from where it was copied.
    (cred,) = auth.creds.values()
    cred["counter"] = 0
    assert_json_error(login(pk_server, auth, name), 401, "passkey_refused")
    cred["counter"] = 10
    ok(login(pk_server, auth, name))


def test_another_origin_is_refused(pk_server, auth):
    name = new_name()
    start = ok(post(pk_server, "/register/start", {"username": name}))
    cred = auth.create(start["options"], origin="https://evil.test")
    assert_json_error(post(pk_server, "/register/finish", {"ceremony": start["ceremony"], "credential": cred}),
                      401, "passkey_refused")
    ok(register(pk_server, auth, name)[2])
    start = login_start(pk_server, name)
    cred = auth.get(start["options"], origin=f"http://localhost:{pk_server.port + 1}")
    assert_json_error(post(pk_server, "/login/finish", {"ceremony": start["ceremony"], "credential": cred}),
                      401, "passkey_refused")


def test_a_taken_name_needs_its_token(pk_server, auth, room):
    name = new_name()
    tokens = ok(register(pk_server, auth, name)[2])
    assert_json_error(post(pk_server, "/register/start", {"username": name}), 409, "user_exists")
    # Signed in, the same user adds a second passkey, and either signs in.
    second = SoftAuthenticator(auth.origin)
    start, _, finish = register(pk_server, second, token=tokens["access_token"])
    assert ok(finish)["user"] == name
    # The first passkey is excluded from the new registration's options.
    assert [c["id"] for c in start["options"]["publicKey"]["excludeCredentials"]] == [b64(c) for c in auth.creds]
    assert len(login_start(pk_server, name)["options"]["publicKey"]["allowCredentials"]) == 2
    assert_connects_as(pk_server, ok(login(pk_server, second, name)), name, room)
    assert_connects_as(pk_server, ok(login(pk_server, auth, name)), name, room)
    # A token names its own user only.
    r = post(pk_server, "/register/start", {"username": new_name()}, token=tokens["access_token"])
    assert_json_error(r, 400, "bad_request")


def test_two_sign_ups_racing_for_one_name(pk_server, auth):
    name = new_name()
    other = SoftAuthenticator(auth.origin)
    a = ok(post(pk_server, "/register/start", {"username": name}))
    b = ok(post(pk_server, "/register/start", {"username": name}))
    ok(post(pk_server, "/register/finish", {"ceremony": a["ceremony"], "credential": auth.create(a["options"])}))
    late = post(pk_server, "/register/finish", {"ceremony": b["ceremony"], "credential": other.create(b["options"])})
    assert_json_error(late, 409, "user_exists")


def test_passkeys_per_user_are_bounded(pk_server, auth):
    name = new_name()
    tokens = ok(register(pk_server, auth, name)[2])
    # Each on another authenticator: one that holds a registered key is excluded.
    for _ in range(9):
        ok(register(pk_server, SoftAuthenticator(auth.origin), token=tokens["access_token"])[2])
    r = post(pk_server, "/register/start", None, token=tokens["access_token"])
    assert_json_error(r, 409, "too_many_passkeys")
    assert len(login_start(pk_server, name)["options"]["publicKey"]["allowCredentials"]) == 10


@pytest.mark.parametrize(
    "path,body,token,status,code",
    [
        ("/register/start", None, None, 400, "bad_request"),
        ("/register/start", {"username": "a\nb"}, None, 400, "bad_request"),
        ("/register/start", {"username": "x" * 129}, None, 400, "bad_request"),
        ("/register/start", None, "not-a-jwt", 401, "unauthorized"),
        ("/register/finish", {"ceremony": "../../etc", "credential": {}}, None, 400, "bad_request"),
        ("/register/finish", {"ceremony": "zz" * 16, "credential": {
            "id": "", "rawId": "", "type": "public-key",
            "response": {"attestationObject": "", "clientDataJSON": ""}}}, None, 400, "invalid_ceremony"),
        ("/login/start", {"username": "nobody-" + uuid.uuid4().hex}, None, 404, "no_passkey"),
        ("/login/start", {"username": ""}, None, 400, "bad_request"),
        ("/login/finish", {"ceremony": "0" * 32}, None, 400, "bad_request"),
        ("/login/finish", "[]", None, 400, "bad_request"),
        ("/nope", {}, None, 404, "not_found"),
    ],
)
def test_bad_requests(pk_server, path, body, token, status, code):
    assert_json_error(post(pk_server, path, body, token=token), status, code)


def test_only_post(pk_server):
    r = pk_server.request("GET", BASE + "/login/start")
    assert_json_error(r, 405, "method_not_allowed")


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--webauthn-rp-id", "example.com", "--webauthn-origin", "https://evil.test"], "webauthn-origin"),
        (["--webauthn-rp-id", "example.com", "--webauthn-origin", "http://example.com"], "webauthn-origin"),
        (["--webauthn-rp-id", "https://example.com"], "webauthn-rp-id"),
    ],
)
def test_the_relying_party_settings_are_checked(roomcast_bin, tmp_path, flags, key):
    r = subprocess.run([roomcast_bin, "serve", "--data", str(tmp_path), *flags], env=base_env(),
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, r
    assert key in r.stderr, r.stderr


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")
def test_the_page_registers_and_signs_in_with_a_virtual_authenticator(pk_server):
    # http://localhost is a secure context, so WebAuthn works there without TLS.
    url = f"http://localhost:{pk_server.port}/"
    name = new_name("page")
    with Browser() as b:
        b.page("WebAuthn.enable", enableUI=False)
        auth_id = b.page(
            "WebAuthn.addVirtualAuthenticator",
            options={
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            },
        )["authenticatorId"]
        b.navigate(url)
        b.type_text("#pk-user", name)
        b.click("#pk-register")
        b.wait_for(f"document.getElementById('status').textContent === 'connected as {name}'", timeout=20)
        creds = b.page("WebAuthn.getCredentials", authenticatorId=auth_id)["credentials"]
        assert len(creds) == 1 and creds[0]["rpId"] == RP_ID, creds

        b.click("#disconnect")
        b.wait_for("document.getElementById('status').textContent.startsWith('disconnected')")
        b.evaluate("document.getElementById('token').value = ''")
        b.click("#pk-login")
        b.wait_for(f"document.getElementById('status').textContent === 'connected as {name}'", timeout=20)
        creds = b.page("WebAuthn.getCredentials", authenticatorId=auth_id)["credentials"]
        assert creds[0]["signCount"] >= 1, creds
        assert not [line for line in b.console if line.startswith("exception")], b.console
