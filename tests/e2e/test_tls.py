"""TLS on the real binary, checked with clients that share no code with it:
`openssl s_client` (ALPN, TLS 1.2 and 1.3, resumption with -sess_out/-sess_in
after 1,000 other handshakes), Python's ssl module and `websockets` over
wss://. Also: plaintext sent to the TLS port, and the handshake timeout."""

import json
import socket
import ssl
import subprocess
import threading
import time

import pytest

from helpers import HOST, Client, _WS_EXTRA, free_port, mint_token, ws_connect


@pytest.fixture(scope="module")
def cert(roomcast_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    c, k = d / "cert.pem", d / "key.pem"
    subprocess.run([roomcast_bin, "dev-cert", "--out-cert", str(c), "--out-key", str(k), "--name", HOST],
                   check=True, capture_output=True, timeout=30)
    return c, k


def tls_server(start_server, cert, *flags):
    c, k = cert
    port = free_port()
    srv = start_server("--tls-listen", f"{HOST}:{port}", "--tls-cert", str(c), "--tls-key", str(k),
                       "--connect-rate-per-ip", "0", "--max-conns-per-ip", "0", *flags)
    srv.tls_port = port
    return srv


def s_client(port, *args, stdin=b"", timeout=20):
    """Runs `openssl s_client` with an HTTP request on stdin; returns its stdout and stderr."""
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost", *args]
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    return r.stdout.decode("utf-8", "replace") + r.stderr.decode("utf-8", "replace")


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def handshakes(port, n, version=None):
    """`n` full handshakes with Python's ssl (no session kept), each followed by
    a request, so the server's session cache sees `n` other clients."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    for _ in range(n):
        with socket.create_connection((HOST, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(HEALTHZ)
                while s.recv(4096):
                    pass


@pytest.mark.parametrize("version,flag", [("TLSv1.3", "-tls1_3"), ("TLSv1.2", "-tls1_2")])
def test_s_client_alpn_and_versions(start_server, cert, version, flag):
    srv = tls_server(start_server, cert)
    out = s_client(srv.tls_port, flag, "-alpn", "http/1.1", "-ign_eof", stdin=HEALTHZ)
    assert f"New, {version}" in out, out
    assert "ALPN protocol: http/1.1" in out, out
    assert "HTTP/1.1 200" in out, out
    # An ALPN protocol the server does not speak is refused (RFC 7301:
    # no_application_protocol), not silently ignored.
    out = s_client(srv.tls_port, flag, "-alpn", "h2", stdin=HEALTHZ)
    assert "no application protocol" in out.lower() or "alert number 120" in out, out


@pytest.mark.parametrize("flag", ["-tls1_3", "-tls1_2"])
def test_resumed_by_ticket_after_1000_other_handshakes(start_server, cert, tmp_path, flag):
    """A stateless ticket opens the session however many clients came
    between: a 16-entry session cache alone would have forgotten it."""
    srv = tls_server(start_server, cert, "--tls-session-cache", "16")
    sess = tmp_path / "sess.pem"
    out = s_client(srv.tls_port, flag, "-sess_out", str(sess), "-ign_eof", stdin=HEALTHZ)
    assert "HTTP/1.1 200" in out and sess.exists(), out
    handshakes(srv.tls_port, 1000)
    out = s_client(srv.tls_port, flag, "-sess_in", str(sess), "-ign_eof", stdin=HEALTHZ)
    assert "Reused, TLSv1." in out, out
    assert "HTTP/1.1 200" in out, out
    m = srv.metrics()
    assert m.total("roomcast_tls_handshakes_total", kind="resumed") >= 1
    assert m.total("roomcast_tls_handshakes_total", kind="full") >= 1001


def test_session_cache_without_tickets_is_bounded(start_server, cert, tmp_path):
    """With tickets off, TLS 1.2 resumes by session id from the cache, which
    keeps the newest entries only: a session is resumed at once, and no
    longer after more clients than the cache holds."""
    srv = tls_server(start_server, cert, "--tls-tickets=false", "--tls-session-cache", "16")
    sess = tmp_path / "sess.pem"
    out = s_client(srv.tls_port, "-tls1_2", "-sess_out", str(sess), "-ign_eof", stdin=HEALTHZ)
    assert "HTTP/1.1 200" in out, out
    out = s_client(srv.tls_port, "-tls1_2", "-sess_in", str(sess), "-ign_eof", stdin=HEALTHZ)
    assert "Reused, TLSv1.2" in out, out
    handshakes(srv.tls_port, 100, ssl.TLSVersion.TLSv1_2)
    out = s_client(srv.tls_port, "-tls1_2", "-sess_in", str(sess), "-ign_eof", stdin=HEALTHZ)
    assert "New, TLSv1.2" in out, out


def test_websockets_over_wss(start_server, cert):
    srv = tls_server(start_server, cert)
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    ctx.check_hostname = False  # the dev cert names 127.0.0.1 as an IP SAN; websockets passes the host

    def wss(user):
        conn = ws_connect(f"wss://{HOST}:{srv.tls_port}/v1/ws", ssl=ctx,
                          additional_headers={"Authorization": f"Bearer {mint_token(user)}"},
                          compression=None, proxy=None, open_timeout=5, ping_interval=None,
                          close_timeout=3, max_size=None, max_queue=None, **_WS_EXTRA)
        return Client(conn)

    a, b = wss("ann"), wss("bob")
    try:
        a.join("tls-room")
        b.join("tls-room")
        ack = a.call("send", room="tls-room", body={"over": "tls"})
        assert ack.get("op") == "ack", ack
        m = b.wait(op="msg", room="tls-room")
        assert m["body"] == {"over": "tls"} and m["from"] == "ann", m
        # The same room from a plain connection sees the same message.
        p = srv.ws("cat")
        try:
            h = p.call("history", room="tls-room")
            assert [x["body"] for x in h["messages"]] == [{"over": "tls"}], h
        finally:
            p.close()
    finally:
        a.close()
        b.close()


def read_all(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False


def test_plaintext_on_the_tls_port_is_answered_400_and_closed(start_server, cert):
    srv = tls_server(start_server, cert)
    with socket.create_connection((HOST, srv.tls_port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data, closed = read_all(s, 5)
    assert closed, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data
    assert json.loads(body)["error"]["code"] == "bad_request", data
    # One stray byte is not a TLS record either: closed at once, no answer
    # needed, long before the handshake or request timeout.
    with socket.create_connection((HOST, srv.tls_port), timeout=5) as s:
        s.sendall(b"\x00")
        data, closed = read_all(s, 3)
    assert closed, data
    # The server goes on: a real TLS client is served.
    assert "HTTP/1.1 200" in s_client(srv.tls_port, "-ign_eof", stdin=HEALTHZ)
    assert srv.metrics().total("roomcast_tls_not_tls_total") == 2


def test_handshake_timeout_is_its_own(start_server, cert):
    """A client that starts a handshake and stalls is closed after
    --tls-handshake-timeout, though --request-timeout is far longer; one that
    finished its handshake keeps the request timeout."""
    srv = tls_server(start_server, cert, "--tls-handshake-timeout", "1s", "--request-timeout", "60s")
    stalled = socket.create_connection((HOST, srv.tls_port), timeout=10)
    stalled.sendall(b"\x16\x03\x01\x00")  # the start of a record header, never finished
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    done = ctx.wrap_socket(socket.create_connection((HOST, srv.tls_port), timeout=10), server_hostname="localhost")
    try:
        data, closed = read_all(stalled, 10)
        assert closed and data == b"", data
        # The handshaken connection, idle for longer than the handshake
        # timeout, is still open and answers.
        time.sleep(1.5)
        done.sendall(HEALTHZ)
        reply, _ = read_all(done, 5)
        assert reply.startswith(b"HTTP/1.1 200"), reply
    finally:
        stalled.close()
        done.close()
    assert srv.metrics().total("roomcast_tls_handshake_timeouts_total") == 1


def test_many_tls_clients_at_once(start_server, cert):
    """Handshakes from several threads at once all finish (no connection is
    lost between the handshake and the first request)."""
    srv = tls_server(start_server, cert)
    errors = []

    def worker():
        try:
            handshakes(srv.tls_port, 50)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:3]
    assert srv.metrics().total("roomcast_tls_handshakes_total", kind="full") >= 200
