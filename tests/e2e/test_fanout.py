"""Ordering under concurrent senders, and a slow consumer that must not stall the room."""

import json
import threading
import time

import pytest

from helpers import OP_CLOSE, OP_TEXT


def run_members(clients, senders, room, per_sender, total, timeout=60):
    """Every client collects the room's msgs; every sender sends concurrently. Returns seqs per client."""
    results = {}
    errors = []

    def collect(idx, c):
        seqs = []
        deadline = time.monotonic() + timeout
        try:
            while len(seqs) < total and time.monotonic() < deadline:
                m = c.recv(timeout=max(0.1, deadline - time.monotonic()))
                if m.get("op") == "msg" and m.get("room") == room:
                    seqs.append(m["seq"])
                elif m.get("op") == "error":
                    errors.append(m)
        except Exception as e:  # recorded, reported below
            errors.append(repr(e))
        results[idx] = seqs

    def blast(c, k):
        for i in range(per_sender):
            c.send({"op": "send", "room": room, "body": {"k": k, "i": i}})

    readers = [threading.Thread(target=collect, args=(i, c)) for i, c in enumerate(clients)]
    for t in readers:
        t.start()
    writers = [threading.Thread(target=blast, args=(c, k)) for k, c in enumerate(senders)]
    for t in writers:
        t.start()
    for t in writers + readers:
        t.join(timeout + 5)
    return results, errors


def check(results, total):
    want = list(range(1, total + 1))
    for idx, seqs in sorted(results.items()):
        if seqs != want:
            dups = len(seqs) - len(set(seqs))
            missing = sorted(set(want) - set(seqs))[:10]
            out_of_order = next((seqs[i - 1:i + 1] for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]), None)
            pytest.fail(
                f"client {idx}: got {len(seqs)} msgs, {dups} duplicates, first missing {missing}, "
                f"first out-of-order pair {out_of_order}"
            )


@pytest.mark.timeout(120)
def test_three_clients_300_each(start_server, room):
    srv = start_server("--send-rate", "0", "--threads", "2")
    clients = [srv.ws(f"u{i}") for i in range(3)]
    for c in clients:
        c.join(room)
    results, errors = run_members(clients, clients, room, 300, 900)
    assert not errors, errors[:5]
    check(results, 900)
    for c in clients:
        c.close()


@pytest.mark.timeout(120)
def test_ordering_across_reactors(start_server, room):
    srv = start_server("--send-rate", "0", "--threads", "4")
    clients = [srv.ws(f"v{i}") for i in range(8)]
    for c in clients:
        c.join(room)
    # With 8 connections over 4 SO_REUSEPORT listeners, members sit on several reactors.
    r = srv.request("GET", "/metrics")
    if r.status == 200:  # metrics themselves are tested in test_http
        from helpers import Metrics

        busy = {lab.get("reactor") for lab, v in Metrics.parse(r.text).get("roomcast_connections_open") if v > 0}
        assert len(busy) >= 2 or not busy, f"all connections on one reactor: {busy}"
    results, errors = run_members(clients, clients[:3], room, 300, 900)
    assert not errors, errors[:5]
    check(results, 900)
    for c in clients:
        c.close()


@pytest.mark.timeout(90)
def test_slow_consumer_closed_others_unaffected(start_server, room):
    srv = start_server("--send-rate", "0", "--max-queue-bytes", "64KiB", "--threads", "2")
    # The slow member: a tiny receive window, and it never reads.
    slow = srv.raw_ws("slow", rcvbuf=4096)
    slow.send_json({"op": "join", "room": room, "ref": "j"})
    fast = srv.ws("fast")
    fast.join(room)
    time.sleep(0.3)  # let the slow join land before the flood
    sender = srv.ws("sender")
    # 6 MB in all: more than the kernel can buffer for the slow member (tcp_wmem allows the
    # server's send buffer to grow to 4 MiB), so its queue in the server must pass the cap.
    n, body = 6000, "x" * 1000
    got = []
    done = threading.Event()

    def read_fast():
        deadline = time.monotonic() + 50
        while len(got) < n and time.monotonic() < deadline:
            try:
                m = fast.recv(timeout=1)
            except TimeoutError:
                continue
            if m.get("op") == "msg":
                got.append(m["seq"])
        done.set()

    t = threading.Thread(target=read_fast)
    t.start()
    t0 = time.monotonic()
    for i in range(n):
        sender.send({"op": "send", "room": room, "body": body})
        if i % 4 == 3:
            # Paced in 4 KB bursts, far below the fast member's queue cap (see the burst test
            # below for what happens when a burst passes the cap within one read).
            time.sleep(0.005)
    done.wait(60)
    elapsed = time.monotonic() - t0
    assert got == list(range(1, n + 1)), f"fast member got {len(got)} of {n} (first {got[:3]}, last {got[-3:]})"
    assert elapsed < 30, f"fast member needed {elapsed:.1f}s for {n} messages"

    # Only now does the slow member read: it must find its stream cut short and closed.
    msgs, close_code, ended = 0, None, "timeout"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        f = slow.recv_frame(max(0.1, deadline - time.monotonic()))
        if f is None:
            ended = "eof"
            break
        _, op, payload = f
        if op == OP_TEXT and b'"msg"' in payload:
            msgs += 1
        elif op == OP_CLOSE:
            close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            ended = "close"
            break
    assert ended in ("close", "eof"), "slow consumer still connected"
    assert msgs < n, "slow consumer received everything: its queue cap was never hit"
    if ended == "close":
        assert close_code == 4000, f"slow consumer closed with {close_code}"
    # The closed slow consumer is visible as a queue drop or a close reason in metrics.
    m = srv.metrics()
    reasons = {lab.get("reason"): v for lab, v in m.get("roomcast_connections_closed_total")}
    assert m.total("roomcast_queue_drops_total") > 0 or any(
        "slow" in (r or "") for r in reasons
    ), f"no trace of the slow consumer in metrics: {reasons}"
    fast.close()
    sender.close()
    slow.close()


def test_sender_json_is_one_frame(server, room):
    """Every msg is one text frame holding one JSON object (checked on the raw wire)."""
    r = server.raw_ws("raw")
    r.send_json({"op": "join", "room": room, "ref": 1})
    assert r.recv_json()["op"] == "joined"
    r.send_json({"op": "send", "room": room, "body": {"a": [1, 2]}, "ref": 2})
    seen = {}
    for _ in range(2):
        m = r.recv_json()
        seen[m["op"]] = m
    assert set(seen) == {"ack", "msg"}, seen
    assert json.loads(json.dumps(seen["msg"]))["body"] == {"a": [1, 2]}
    r.close()


@pytest.mark.timeout(60)
def test_fast_member_not_closed_by_burst(start_server, room):
    """A member that reads as fast as it can is not a slow consumer, even when a burst
    larger than the queue cap arrives at once: the cap is for bytes the socket refuses."""
    srv = start_server("--send-rate", "0", "--max-queue-bytes", "64KiB", "--threads", "2")
    fast = srv.ws("fast")
    fast.join(room)
    sender = srv.ws("sender")
    n = 200
    frames = [json.dumps({"op": "send", "room": room, "body": "y" * 1000}) for _ in range(n)]
    # One write of ~200 KB: the server reads it in a few large chunks.
    sender.conn.socket.sendall(b"".join(_masked_text(f.encode()) for f in frames))
    seqs = []
    try:
        while len(seqs) < n:
            m = fast.recv(timeout=10)
            if m.get("op") == "msg":
                seqs.append(m["seq"])
    except Exception as e:  # noqa: BLE001 - reported below
        pytest.fail(f"fast member lost after {len(seqs)} of {n} messages: {e!r}")
    assert seqs == list(range(1, n + 1))
    fast.close()
    sender.close()


def _masked_text(payload: bytes) -> bytes:
    from helpers import encode_frame

    return encode_frame(OP_TEXT, payload)
