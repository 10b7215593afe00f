"""Reload without restart: SIGHUP and POST /v1/api/reload re-read the config
file, the TLS certificate and key and the key files; a bad new config is
refused with a log line and the old one stays; open connections go on."""

import hashlib
import json
import signal
import socket
import ssl
import subprocess
import time

import pytest

from helpers import HOST, free_port, mint_token

BIG = "x" * 3000


def write_config(path, **settings):
    lines = []
    for k, v in settings.items():
        lines.append(f"{k} = {json.dumps(v) if isinstance(v, str) else v}")
    path.write_text("\n".join(lines) + "\n")


def wait_line(srv, text, after, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = srv.output().splitlines()[after:]
        for l in lines:
            if text in l:
                return l
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n" + "\n".join(srv.output().splitlines()[after:]))


def sighup(srv, text):
    mark = len(srv.output().splitlines())
    srv.proc.send_signal(signal.SIGHUP)
    return wait_line(srv, text, mark)


def send_big(srv, user):
    """A new connection sends a 3000-byte message: its ack, or the close code."""
    c = srv.ws(user)
    try:
        c.join("reload-room")
        c.send({"op": "send", "room": "reload-room", "body": BIG, "ref": "big"})
        try:
            m = c.wait(lambda m: m.get("ref") == "big", timeout=3)
            return m.get("op")
        except Exception:
            code, _, _ = c.closed(timeout=3)
            return code
    finally:
        c.close()


def api_reload(srv, token):
    return srv.request("POST", "/v1/api/reload", body=b"", headers={"Authorization": f"Bearer {token}"})


def test_sighup_applies_new_limits_and_refuses_a_bad_file(start_server, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    write_config(cfg, **{"max-message-bytes": 1024})
    srv = start_server("--config", str(cfg))
    assert send_big(srv, "ann") == 1009
    old = srv.ws("old")  # open across every reload below
    old.join("reload-room")

    write_config(cfg, **{"max-message-bytes": 65536, "history-tail": 7})
    line = sighup(srv, "config reloaded")
    assert "changed: max-message-bytes" in line and "kept until a restart: history-tail" in line, line
    assert send_big(srv, "bob") == "ack"

    # A bad file: refused with a line, the old settings stay.
    cfg.write_text('max-message-bytes = "lots"\n')
    line = sighup(srv, "config not reloaded")
    assert "max-message-bytes" in line, line
    assert send_big(srv, "cat") == "ack"
    write_config(cfg, **{"max-message-bytes": 0})
    sighup(srv, "config not reloaded")
    assert send_big(srv, "dan") == "ack"

    # The connection opened before all this never noticed.
    assert old.call("send", room="reload-room", body="still here").get("op") == "ack"
    old.close()


def test_api_reload_answers_and_needs_an_admin(start_server, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    write_config(cfg, **{"max-message-bytes": 1024})
    srv = start_server("--config", str(cfg))
    assert srv.request("POST", "/v1/api/reload", body=b"").status == 401
    assert api_reload(srv, mint_token("ann")).status == 403
    assert srv.request("GET", "/v1/api/reload", headers={"Authorization": f"Bearer {mint_token('root', role='admin')}"}).status == 405

    write_config(cfg, **{"max-message-bytes": 65536, "send-rate": 5})
    r = api_reload(srv, mint_token("root", role="admin"))
    assert r.status == 200, r
    body = r.json()
    assert body["reloaded"] is True and set(body["changed"]) == {"max-message-bytes", "send-rate"}, body
    assert body["restart_needed"] == [], body
    assert send_big(srv, "eve") == "ack"
    m = srv.metrics()
    assert m is not None

    cfg.write_text("no-such-setting = 1\n")
    r = api_reload(srv, mint_token("root", role="admin"))
    assert r.status == 422 and r.json()["error"]["code"] == "bad_config", r
    assert "no-such-setting" in r.json()["error"]["message"], r.json()
    assert send_big(srv, "fay") == "ack"


def cert_pair(binary, d, name):
    c, k = d / f"{name}.cert.pem", d / f"{name}.key.pem"
    subprocess.run([binary, "dev-cert", "--out-cert", str(c), "--out-key", str(k), "--name", name], check=True,
                   capture_output=True, timeout=30)
    return c, k


def fingerprint(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((HOST, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def test_sighup_swaps_the_tls_certificate_and_keeps_open_tls_connections(start_server, roomcast_bin, tmp_path):
    a = cert_pair(roomcast_bin, tmp_path, "a.example")
    b = cert_pair(roomcast_bin, tmp_path, "b.example")
    live_c, live_k = tmp_path / "cert.pem", tmp_path / "key.pem"
    live_c.write_bytes(a[0].read_bytes())
    live_k.write_bytes(a[1].read_bytes())
    port = free_port()
    srv = start_server("--tls-listen", f"{HOST}:{port}", "--tls-cert", str(live_c), "--tls-key", str(live_k))
    first = fingerprint(port)

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    held = ctx.wrap_socket(socket.create_connection((HOST, port), timeout=5))

    def ask(s):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return s.recv(4096)

    assert ask(held).startswith(b"HTTP/1.1 200")
    live_c.write_bytes(b[0].read_bytes())
    live_k.write_bytes(b[1].read_bytes())
    sighup(srv, "config reloaded")
    second = fingerprint(port)
    assert first != second
    assert ask(held).startswith(b"HTTP/1.1 200")  # the old session goes on

    # A key that does not match its certificate: refused, the served one stays.
    live_k.write_bytes(a[1].read_bytes())
    sighup(srv, "config not reloaded")
    assert fingerprint(port) == second
    held.close()
