"""HTTP/1.1 behaviour: routes, keep-alive, pipelining, limits and JSON errors."""

import time

import pytest

from helpers import HttpConn, Metrics, assert_json_error, mint_token

# The metric families /metrics must expose, each sample labelled with its reactor.
METRIC_FAMILIES = [
    "roomcast_connections_open",
    "roomcast_connections_accepted_total",
    "roomcast_connections_closed_total",
    "roomcast_frames_in_total",
    "roomcast_frames_out_total",
    "roomcast_bytes_in_total",
    "roomcast_bytes_out_total",
    "roomcast_messages_published_total",
    "roomcast_messages_delivered_total",
    "roomcast_queue_drops_total",
]


def auth(user="ann"):
    return {"Authorization": f"Bearer {mint_token(user)}"}


def test_healthz(server):
    r = server.request("GET", "/healthz")
    assert r.status == 200, r
    assert r.text.strip() == "ok"


def test_metrics_families(server, room):
    # Make every family have something to count: a WebSocket that joins, sends and closes.
    c = server.ws("ann")
    c.join(room)
    c.call("send", room=room, body="hi")
    c.wait(op="msg", room=room)
    c.close()
    time.sleep(0.3)
    r = server.request("GET", "/metrics")
    assert r.status == 200, r
    assert r.header("content-type", "").startswith("text/plain"), r
    m = Metrics.parse(r.text)
    names = {n for n, _, _ in m.samples}
    missing = [f for f in METRIC_FAMILIES if f not in names]
    assert not missing, f"missing metric families {missing}; have {sorted(names)}"
    for fam in METRIC_FAMILIES:
        for labels, _ in m.get(fam):
            assert "reactor" in labels and labels["reactor"].isdigit(), f"{fam} {labels} lacks reactor=\"N\""
    reactors = {lab["reactor"] for lab, _ in m.get("roomcast_connections_accepted_total")}
    assert reactors == {"0", "1"}, f"expected reactors 0 and 1 (--threads 2), got {reactors}"
    for lab, _ in m.get("roomcast_connections_closed_total"):
        assert lab.get("reason"), f"roomcast_connections_closed_total without reason: {lab}"
    assert m.total("roomcast_connections_accepted_total") >= 2
    assert m.total("roomcast_connections_closed_total") >= 1
    assert m.total("roomcast_frames_in_total") >= 2
    assert m.total("roomcast_frames_out_total") >= 2
    assert m.total("roomcast_bytes_in_total") > 0
    assert m.total("roomcast_bytes_out_total") > 0
    assert m.total("roomcast_messages_published_total") >= 1
    assert m.total("roomcast_messages_delivered_total") >= 1
    assert m.total("roomcast_connections_open") >= 1  # this very request


def test_metrics_type_lines(server):
    m = server.metrics()
    for fam in METRIC_FAMILIES:
        want = "gauge" if fam == "roomcast_connections_open" else "counter"
        assert m.types.get(fam) == want, f"# TYPE {fam} {want} expected, got {m.types.get(fam)}"


def test_keep_alive(server):
    c = server.http()
    try:
        r1 = c.request("GET", "/healthz")
        r2 = c.request("GET", "/healthz")
        assert r1.status == 200 and r2.status == 200
        assert r2.text.strip() == "ok"
    finally:
        c.close()


def test_pipelining_in_order(server):
    c = server.http()
    try:
        reqs = c.build("GET", "/healthz") + c.build("GET", "/nope-404") + c.build("GET", "/metrics")
        c.send(reqs)
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        assert (r1.status, r2.status, r3.status) == (200, 404, 200), (r1, r2, r3)
        assert r1.text.strip() == "ok"
        assert "roomcast_" in r3.text
    finally:
        c.close()


def test_pipelining_split_across_writes(server):
    c = server.http()
    try:
        data = c.build("GET", "/healthz") * 3
        # Cut the bytes mid-request to check that a partial head waits for the rest.
        c.send(data[:10])
        time.sleep(0.1)
        c.send(data[10:50])
        time.sleep(0.1)
        c.send(data[50:])
        for _ in range(3):
            r = c.read_response()
            assert r is not None and r.status == 200 and r.text.strip() == "ok", r
    finally:
        c.close()


def test_404_json(server):
    r = server.request("GET", "/no/such/thing")
    assert_json_error(r, 404, "not_found")


def test_405(server):
    r = server.request("DELETE", "/healthz")
    assert_json_error(r, 405, "method_not_allowed")


def test_431_headers_too_large(server):
    c = server.http()
    try:
        big = "x" * 1000
        headers = {f"X-Filler-{i}": big for i in range(20)}  # ~20 KiB of headers
        c.send(c.build("GET", "/healthz", headers=headers))
        r = c.read_response()
        assert r is not None, "closed without a response"
        assert r.status == 431, r
    finally:
        c.close()


def test_414_long_target(server):
    c = server.http()
    try:
        # 15 000 bytes of target: longer than any sensible target limit, but the whole
        # head stays under the 16 KiB header limit, so 431 does not apply.
        c.send(c.build("GET", "/healthz?" + "a" * 15000))
        r = c.read_response()
        assert r is not None, "closed without a response"
        assert r.status == 414, r
    finally:
        c.close()


def test_413_body_too_large(server, room):
    c = server.http()
    try:
        head = (
            f"POST /v1/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {mint_token('ann')}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
        )
        c.send(head.encode())
        r = c.read_response()
        assert r is not None, "closed without a response"
        assert_json_error(r, 413, "too_large")
    finally:
        c.close()


def test_411_post_without_length(server, room):
    c = server.http()
    try:
        head = (
            f"POST /v1/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {mint_token('ann')}\r\nContent-Type: application/json\r\n\r\n"
        )
        c.send(head.encode())
        r = c.read_response()
        assert r is not None, "closed without a response"
        assert r.status == 411, r
    finally:
        c.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\x03 garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    ],
    ids=["binary", "no-target", "bad-header", "bad-length"],
)
def test_400_garbage(server, garbage):
    c = server.http()
    try:
        c.send(garbage)
        r = c.read_response()
        assert r is not None, "closed without a response"
        assert r.status == 400, r
    finally:
        c.close()


def test_408_slowloris(start_server):
    srv = start_server("--request-timeout", "2s")
    c = srv.http(timeout=10)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        # Drip one header byte every 0.3 s: the head never completes in time.
        resp = None
        while time.monotonic() - t0 < 8:
            try:
                c.send(b"X")
            except OSError:
                break
            c.sock.settimeout(0.3)
            try:
                chunk = c.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            c.reader.buf += chunk
            if not chunk:
                c.reader.eof = True
                break
            if b"\r\n\r\n" in c.reader.buf:
                break
        elapsed = time.monotonic() - t0
        resp = c.read_response(timeout=3)
        assert resp is not None, f"closed after {elapsed:.1f}s without a 408"
        assert resp.status == 408, resp
        assert 1.5 <= elapsed <= 6, f"408 came after {elapsed:.1f}s with --request-timeout 2s"
        assert c.closed_by_peer(3), "connection not closed after 408"
    finally:
        c.close()


def test_idle_keepalive_is_not_408_for_complete_requests(start_server):
    srv = start_server("--request-timeout", "2s")
    c = srv.http(timeout=10)
    try:
        # Each request is complete at once; the gaps between them are idle keep-alive time.
        for _ in range(2):
            r = c.request("GET", "/healthz")
            assert r.status == 200, r
            time.sleep(1.0)
    finally:
        c.close()


def test_chunked_post(server, room):
    c = server.http()
    try:
        body = b'{"body": {"text": "chunked hello"}}'
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:])) + b"0\r\n\r\n"
        head = (
            f"POST /v1/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {mint_token('ann')}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        c.send(head + chunks)
        r = c.read_response()
        assert r.status == 201, r
        assert r.json()["seq"] == 1
        # The connection stays usable after a chunked body.
        r2 = c.request("GET", f"/v1/rooms/{room}/messages", headers=auth())
        assert r2.status == 200, r2
        assert [m["body"] for m in r2.json()["messages"]] == [{"text": "chunked hello"}]
    finally:
        c.close()


def test_head(server):
    c = server.http()
    try:
        r = c.request("HEAD", "/healthz")
        assert r.status == 200, r
        # No body follows a HEAD answer: the next response on the socket must parse cleanly.
        r2 = c.request("GET", "/healthz")
        assert r2.status == 200 and r2.text.strip() == "ok", r2
    finally:
        c.close()


def test_index_page(server):
    r = server.request("GET", "/")
    assert r.status == 200, r
    assert r.header("content-type", "").startswith("text/html"), r
    low = r.text.lower()
    assert "<html" in low or "<!doctype html" in low
    assert "<script" in low
    assert "<form" in low or "<input" in low
    assert "/v1/ws" in r.text, "the page should connect to /v1/ws"


def test_connection_close_header(server):
    c = server.http()
    try:
        r = c.request("GET", "/healthz", headers={"Connection": "close"})
        assert r.status == 200
        assert c.closed_by_peer(3), "server kept the connection after Connection: close"
    finally:
        c.close()


def test_http10_closes(server):
    c = server.http()
    try:
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert c.closed_by_peer(3), "HTTP/1.0 request without keep-alive should close"
    finally:
        c.close()
