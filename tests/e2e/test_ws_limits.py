"""RFC 6455 rules and limits on raw frames: masking, UTF-8, sizes, control frames, idle time."""

import struct
import time

import pytest

from helpers import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT


@pytest.fixture(scope="module")
def small(module_servers):
    """A server whose messages may be at most 1024 bytes."""
    return module_servers("--send-rate", "0", "--max-message-bytes", "1024")


def close_code(raw, timeout=5):
    code, frames = raw.until_close(timeout)
    return code


def test_message_over_limit_1009(small):
    r = small.raw_ws("ann")
    r.send_frame(OP_TEXT, b'{"op":"ping","pad":"' + b"x" * 2000 + b'"}')
    assert close_code(r) == 1009
    r.close()


def test_fragmented_message_over_limit_1009(small):
    r = small.raw_ws("ann")
    part = b"x" * 500
    r.send_frame(OP_TEXT, b'{"op":"ping","pad":"' + part, fin=False)
    r.send_frame(OP_CONT, part, fin=False)
    r.send_frame(OP_CONT, part + b'"}', fin=True)
    assert close_code(r) == 1009
    r.close()


def test_message_at_limit_ok(small):
    r = small.raw_ws("ann")
    msg = b'{"op":"ping","ref":1,"pad":"'
    msg += b"x" * (1024 - len(msg) - 2) + b'"}'
    assert len(msg) == 1024
    r.send_frame(OP_TEXT, msg)
    assert r.recv_json()["op"] == "pong"
    r.close()


def test_unmasked_frame_1002(server):
    r = server.raw_ws("ann")
    r.send_frame(OP_TEXT, b'{"op":"ping"}', mask=False)
    assert close_code(r) == 1002
    r.close()


def test_invalid_utf8_1007(server):
    r = server.raw_ws("ann")
    r.send_frame(OP_TEXT, b'{"op":"ping","x":"\xff\xfe"}')
    assert close_code(r) == 1007
    r.close()


def test_invalid_utf8_across_fragments_1007(server):
    r = server.raw_ws("ann")
    # A valid 3-byte sequence split across fragments is fine ...
    euro = "€".encode()
    r.send_frame(OP_TEXT, b'{"op":"ping","ref":"' + euro[:1], fin=False)
    r.send_frame(OP_CONT, euro[1:] + b'"}', fin=True)
    assert r.recv_json() == {"op": "pong", "ref": "€"}
    # ... an invalid continuation is not.
    r.send_frame(OP_TEXT, b'{"op":"ping","ref":"' + euro[:1], fin=False)
    r.send_frame(OP_CONT, b"\x41" + b'"}', fin=True)
    assert close_code(r) == 1007
    r.close()


def test_fragmented_with_interleaved_ping(server):
    r = server.raw_ws("ann")
    r.send_frame(OP_TEXT, b'{"op":"pi', fin=False)
    r.send_frame(OP_PING, b"hello")
    r.send_frame(OP_CONT, b'ng","ref":9}', fin=True)
    fin, op, payload = r.recv_frame()
    assert (op, payload) == (OP_PONG, b"hello")
    assert r.recv_json() == {"op": "pong", "ref": 9}
    r.close()


@pytest.mark.parametrize(
    "frames",
    [
        [(OP_PING, b"x" * 126, True, 0)],  # control frame over 125 bytes
        [(OP_PING, b"x", False, 0)],  # fragmented control frame
        [(0x3, b"", True, 0)],  # reserved opcode
        [(OP_TEXT, b"{}", True, 0x4)],  # RSV1 without an extension
        [(OP_CONT, b"{}", True, 0)],  # continuation with nothing to continue
        [(OP_TEXT, b"{", False, 0), (OP_TEXT, b"}", True, 0)],  # new message inside a fragmented one
    ],
    ids=["big-ping", "fragmented-ping", "reserved-op", "rsv1", "lone-continuation", "text-in-text"],
)
def test_protocol_errors_1002(server, frames):
    r = server.raw_ws("ann")
    for op, payload, fin, rsv in frames:
        r.send_frame(op, payload, fin=fin, rsv=rsv)
    assert close_code(r) == 1002
    r.close()


def test_close_handshake(server):
    r = server.raw_ws("ann")
    r.send_close(1000, b"bye")
    code, frames = r.until_close(5)
    assert code == 1000
    # After its close frame the server closes the TCP connection.
    assert r.recv_frame(5) is None
    r.close()


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_invalid_close_code_1002(server, code):
    r = server.raw_ws("ann")
    r.send_close(code)
    assert close_code(r) == 1002
    # Both sides have sent a close frame: the server closes the TCP connection (RFC 6455 7.1.1).
    try:
        assert r.recv_frame(3) is None, "data after the close frame"
    except TimeoutError:
        pytest.fail("server kept the TCP connection open after the close handshake")
    r.close()


def test_close_reason_invalid_utf8_1007(server):
    r = server.raw_ws("ann")
    r.send_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff")
    assert close_code(r) == 1007
    try:
        assert r.recv_frame(3) is None, "data after the close frame"
    except TimeoutError:
        pytest.fail("server kept the TCP connection open after the close handshake")
    r.close()


def test_protocol_error_then_tcp_close(server):
    """After failing the connection with 1002 the server closes TCP without waiting long."""
    r = server.raw_ws("ann")
    r.send_frame(0x3, b"")
    assert close_code(r) == 1002
    r.send_close(1002)
    try:
        assert r.recv_frame(3) is None, "data after the close frame"
    except TimeoutError:
        pytest.fail("server kept the TCP connection open after the close handshake")
    r.close()


def test_ping_pong_frames(server):
    r = server.raw_ws("ann")
    r.send_frame(OP_PING, b"abc")
    fin, op, payload = r.recv_frame()
    assert (fin, op, payload) == (True, OP_PONG, b"abc")
    # An unsolicited pong is ignored.
    r.send_frame(OP_PONG, b"zzz")
    r.send_json({"op": "ping", "ref": 1})
    assert r.recv_json() == {"op": "pong", "ref": 1}
    r.close()


@pytest.mark.timeout(40)
def test_idle_timeout(start_server):
    srv = start_server("--idle-timeout", "2s", "--ping-interval", "1s")
    good = srv.ws("good")  # the library answers the server's pings
    raw = srv.raw_ws("mute")  # never answers anything
    t0 = time.monotonic()
    pings = 0
    code = "open"
    while time.monotonic() - t0 < 10:
        try:
            f = raw.recv_frame(max(0.1, 10 - (time.monotonic() - t0)))
        except TimeoutError:
            break
        if f is None:
            code = None
            break
        if f[1] == OP_PING:
            pings += 1
        elif f[1] == OP_CLOSE:
            code = struct.unpack("!H", f[2][:2])[0] if len(f[2]) >= 2 else 1005
            break
    elapsed = time.monotonic() - t0
    assert pings >= 1, "server sent no ping to an idle connection"
    assert code != "open", "a client that never answers pings was not closed"
    assert elapsed <= 6, f"closed after {elapsed:.1f}s with --idle-timeout 2s"
    # The answering client is still there after several idle periods.
    time.sleep(max(0.0, 5 - elapsed))
    assert good.call("ping")["op"] == "pong"
    good.close()
    raw.close()


def test_binary_echo_path_absent_without_flag_keeps_ws_rules(server):
    """Binary frames on /v1/ws are not echoed: they are answered with bad_request."""
    r = server.raw_ws("ann")
    r.send_frame(OP_BINARY, b"\x01\x02\x03")
    m = r.recv_json()
    assert m["op"] == "error" and m["code"] == "bad_request"
    r.close()
