"""Public keys beside the HS256 secret: --jwt-public-key and --jwks, reloaded on SIGHUP.

Tokens are minted here with PyJWT and `cryptography`, independently of the server's code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import tempfile
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from conftest import base_env
from helpers import mint_token


def upgrade_status(server, token) -> int:
    """The status of a WebSocket upgrade carrying `token` (101 when accepted)."""
    c = server.http()
    try:
        c.send(c.build("GET", "/v1/ws", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Authorization": f"Bearer {token}",
        }))
        r = c.read_response(head_only=True)
        assert r is not None, "closed without a response"
        return r.status
    finally:
        c.close()


def claims(sub: str, **extra) -> dict:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 600, **extra}


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key, kid: str, **extra) -> dict:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(pub, as_dict=True)
    d.update(kid=kid, **extra)
    return d


def write_jwks(path, keys):
    # Written to a new file and renamed, as a key rotation tool would.
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": keys}, f)
    os.replace(tmp, path)


def hs256_with(secret: bytes, payload: dict, **header) -> str:
    """An HS256 token whose HMAC key is `secret`: any bytes, a public key's included."""
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    head = {"alg": "HS256", "typ": "JWT", **header}
    signing = b64(json.dumps(head).encode()) + "." + b64(json.dumps(payload).encode())
    return signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def hangup(srv):
    # Not `srv.signal`: that marks the server as already told to stop.
    srv.proc.send_signal(signal.SIGHUP)


def wait_for_line(srv, text: str, after: int, timeout: float = 10.0) -> str:
    """The first output line containing `text` among those after the first `after` lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = srv.output().splitlines()[after:]
        for line in lines:
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r}; output:\n{srv.output()}")


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "ed2": ed25519.Ed25519PrivateKey.generate(),
    }


def test_rs256_es256_and_eddsa_tokens_connect(start_server, tmp_path, keys):
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(public_pem(keys["rsa"]))
    jwks = tmp_path / "keys.json"
    write_jwks(jwks, [jwk(keys["ed"], "ed-1", alg="EdDSA"), jwk(keys["ec"], "ec-1")])
    srv = start_server("--jwt-public-key", pem, "--jwks", jwks)

    rs = jwt.encode(claims("rsa-user"), keys["rsa"], algorithm="RS256")
    ed = jwt.encode(claims("ed-user"), keys["ed"], algorithm="EdDSA", headers={"kid": "ed-1"})
    es = jwt.encode(claims("ec-user"), keys["ec"], algorithm="ES256", headers={"kid": "ec-1"})
    for token, sub in [(rs, "rsa-user"), (ed, "ed-user"), (es, "ec-user"), (mint_token("hs-user"), "hs-user")]:
        c = srv.ws(None, token=token)
        assert c.call("ping")["op"] == "pong"
        c.join("keys-room")
        c.call("send", room="keys-room", body="hi")
        assert c.wait(op="msg", room="keys-room")["from"] == sub
        c.close()

    # The attacks, over the wire: each is a 401 before the upgrade.
    refused = {
        "HS256 keyed with the RSA public key": hs256_with(public_pem(keys["rsa"]), claims("mallory")),
        "unknown kid": jwt.encode(claims("mallory"), keys["ed"], algorithm="EdDSA", headers={"kid": "ed-9"}),
        "a kid on the PEM key's token": jwt.encode(claims("mallory"), keys["rsa"], algorithm="RS256",
                                                     headers={"kid": "rsa"}),
        "signed by another key": jwt.encode(claims("mallory"), keys["ed2"], algorithm="EdDSA",
                                            headers={"kid": "ed-1"}),
        "header alg not the key's": jwt.encode(claims("mallory"), keys["rsa"], algorithm="RS512"),
        "alg none": jwt.encode(claims("mallory"), None, algorithm="none"),
        "alg none with a kid": jwt.encode(claims("mallory"), None, algorithm="none", headers={"kid": "ed-1"}),
        "expired past the leeway": jwt.encode(claims("mallory", exp=int(time.time()) - 120), keys["rsa"],
                                              algorithm="RS256"),
        "nbf ahead": jwt.encode(claims("mallory", nbf=int(time.time()) + 300), keys["rsa"], algorithm="RS256"),
    }
    for what, token in refused.items():
        assert upgrade_status(srv, token) == 401, what
    # Within the leeway (30 s by default) an expired RS256 token still passes the upgrade.
    recent = jwt.encode(claims("late", exp=int(time.time()) - 5), keys["rsa"], algorithm="RS256")
    assert upgrade_status(srv, recent) == 101


def test_jwks_swap_on_sighup(start_server, tmp_path, keys):
    jwks = tmp_path / "keys.json"
    write_jwks(jwks, [jwk(keys["ed"], "old")])
    srv = start_server("--jwks", jwks)
    old = jwt.encode(claims("ann"), keys["ed"], algorithm="EdDSA", headers={"kid": "old"})
    new = jwt.encode(claims("bo"), keys["rsa"], algorithm="RS256", headers={"kid": "new"})
    assert upgrade_status(srv, old) == 101
    assert upgrade_status(srv, new) == 401
    kept = srv.ws(None, token=old)
    assert kept.call("ping")["op"] == "pong"

    # Rotate: the new kid works, the removed one fails, the open connection stays.
    write_jwks(jwks, [jwk(keys["rsa"], "new", alg="RS256")])
    mark = len(srv.output().splitlines())
    hangup(srv)
    line = wait_for_line(srv, "keys reloaded", mark)
    assert "1 JWKS keys" in line, line
    assert upgrade_status(srv, new) == 101
    assert upgrade_status(srv, old) == 401
    assert kept.call("ping")["op"] == "pong"
    c = srv.ws(None, token=new)
    assert c.call("ping")["op"] == "pong"

    # A bad file is refused with one line; the keys stay as they were.
    for bad in ['{"keys": [', json.dumps({"keys": [jwk(keys["rsa"], "x", alg="HS256")]}),
                json.dumps({"keys": [{"kty": "oct", "kid": "x", "k": "c2VjcmV0"}]})]:
        with open(jwks, "w") as f:
            f.write(bad)
        mark = len(srv.output().splitlines())
        hangup(srv)
        line = wait_for_line(srv, "keys not reloaded", mark)
        assert str(jwks) in line, line
        assert upgrade_status(srv, new) == 101
        assert upgrade_status(srv, old) == 401
    assert kept.call("ping")["op"] == "pong"
    assert c.call("ping")["op"] == "pong"
    kept.close()
    c.close()
    assert srv.proc.poll() is None, "SIGHUP must not stop the server"


def run_bin(roomcast_bin, args, env):
    cwd = tempfile.mkdtemp(prefix="rc-keys-")
    return subprocess.run([roomcast_bin, *args], env=base_env(env), cwd=cwd, capture_output=True, text=True,
                          timeout=10)


def test_short_env_secret_exits_2(roomcast_bin):
    short = "x" * 31
    for args in (["serve", "--listen", "127.0.0.1:0"], ["token", "--sub", "ann"]):
        r = run_bin(roomcast_bin, args, {"ROOMCAST_JWT_SECRET": short})
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "ROOMCAST_JWT_SECRET" in lines[0] and "32 bytes" in lines[0], r.stderr
        assert short not in r.stderr, "the secret is not echoed"
    r = run_bin(roomcast_bin, ["token", "--sub", "ann"], {"ROOMCAST_JWT_SECRET": "x" * 32})
    assert r.returncode == 0, r


def test_bad_key_files_stop_the_start(roomcast_bin, tmp_path, keys):
    private = tmp_path / "private.pem"
    private.write_bytes(keys["rsa"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    jwks = tmp_path / "keys.json"
    write_jwks(jwks, [jwk(keys["rsa"], "k", alg="ES256")])
    for flag, path in (("--jwt-public-key", private), ("--jwks", jwks), ("--jwks", tmp_path / "absent.json")):
        r = run_bin(roomcast_bin, ["serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "d"), flag, str(path)],
                    None)
        assert r.returncode != 0, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], r.stderr
