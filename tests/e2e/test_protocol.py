"""Protocol v1 over WebSocket: every op, every reachable error code, replay and dedup."""

import json
import threading
import time

import pytest

from helpers import OP_BINARY


def send_n(client, room, n, start=0):
    """Sends n messages and waits for all acks; returns the acks."""
    acks = []
    for i in range(n):
        acks.append(client.call("send", room=room, body={"i": start + i}))
    for a in acks:
        assert a["op"] == "ack", a
    return acks


def msgs_of(client, room, count, timeout=10.0):
    out = []
    for _ in range(count):
        out.append(client.wait(op="msg", room=room, timeout=timeout))
    return out


def test_join_joined_seq(server, room):
    a = server.ws("ann")
    j = a.call("join", room=room, ref=7)
    assert j == {"op": "joined", "ref": 7, "room": room, "seq": 0}, j
    send_n(a, room, 2)
    b = server.ws("bo")
    j = b.call("join", room=room, ref="s-ref")
    assert j["op"] == "joined" and j["ref"] == "s-ref" and j["room"] == room and j["seq"] == 2, j
    assert "recovered" not in j, "recovered only comes with since"
    a.close()
    b.close()


def test_leave_left(server, room):
    a = server.ws("ann")
    a.join(room)
    r = a.call("leave", room=room, ref=3)
    assert r == {"op": "left", "ref": 3, "room": room}, r
    # No more messages after leaving.
    b = server.ws("bo")
    b.join(room)
    b.call("send", room=room, body="after leave")
    b.wait(op="msg", room=room)
    assert a.call("ping")["op"] == "pong"
    assert [m for m in a.drain(0.3) if m.get("op") == "msg"] == []
    a.close()
    b.close()


def test_send_ack_and_msg(server, room):
    a, b = server.ws("ann"), server.ws("bo")
    a.join(room)
    b.join(room)
    a.send({"op": "send", "room": room, "body": {"text": "hello"}, "ref": "a7", "id": "m-1"})
    ack = a.wait(op="ack")
    assert ack["ref"] == "a7" and ack["room"] == room and ack["seq"] == 1 and ack["id"] == "m-1", ack
    assert isinstance(ack["ts"], int) and ack["ts"] > 1_600_000_000_000
    for c in (a, b):
        m = c.wait(op="msg", room=room)
        assert m == {"op": "msg", "room": room, "seq": 1, "ts": ack["ts"], "from": "ann",
                     "body": {"text": "hello"}, "id": "m-1"}, m
    # Without an id, neither ack nor msg carries one; integer refs are copied as integers.
    ack = a.call("send", room=room, body=[1, "two", None], ref=12)
    assert ack["ref"] == 12 and ack["seq"] == 2 and "id" not in ack, ack
    m = b.wait(op="msg", room=room)
    assert m["seq"] == 2 and m["body"] == [1, "two", None] and "id" not in m, m
    a.close()
    b.close()


def test_send_without_join(server, room):
    a, b = server.ws("ann"), server.ws("bo")
    b.join(room)
    ack = a.call("send", room=room, body="from outside")
    assert ack["op"] == "ack" and ack["seq"] == 1
    assert b.wait(op="msg", room=room)["body"] == "from outside"
    # The sender, not being a member, gets no msg.
    assert a.call("ping")["op"] == "pong"
    assert [m for m in a.drain(0.3) if m.get("op") == "msg"] == []
    a.close()
    b.close()


def test_double_join_single_membership(server, room):
    a = server.ws("ann")
    assert a.call("join", room=room)["seq"] == 0
    j2 = a.call("join", room=room)
    assert j2["op"] == "joined" and j2["seq"] == 0, j2
    send_n(a, room, 2)
    got = [m for m in a.drain(0.5) if m.get("op") == "msg"]
    assert [m["seq"] for m in got] == [1, 2], f"double membership: {got}"
    # One leave is enough to stop delivery.
    assert a.call("leave", room=room)["op"] == "left"
    b = server.ws("bo")
    b.call("send", room=room, body="x")
    time.sleep(0.3)
    assert [m for m in a.drain(0.3) if m.get("op") == "msg"] == []
    a.close()
    b.close()


def test_history_op(server, room):
    a = server.ws("ann")
    send_n(a, room, 10)

    def hist(**kw):
        r = a.call("history", room=room, **kw)
        assert r["op"] == "history" and r["room"] == room, r
        return [m["seq"] for m in r["messages"]], r["more"], r

    s, more, r = hist()
    assert s == list(range(1, 11)) and more is False
    for m in r["messages"]:
        assert "op" not in m and m["room"] == room and m["from"] == "ann" and m["body"] == {"i": m["seq"] - 1}
    assert hist(limit=3)[:2] == ([8, 9, 10], True)
    assert hist(before=8, limit=3)[:2] == ([5, 6, 7], True)
    assert hist(before=3, limit=5)[:2] == ([1, 2], False)
    assert hist(after=0, limit=4)[:2] == ([1, 2, 3, 4], True)
    assert hist(after=7, limit=5)[:2] == ([8, 9, 10], False)
    assert hist(after=2, before=9, limit=3)[:2] == ([3, 4, 5], True)
    assert hist(after=10)[:2] == ([], False)
    assert hist(limit=0)[0] == [10], "limit clamps to at least 1"
    r = a.call("history", room=room, ref=99)
    assert r["ref"] == 99
    empty = a.call("history", room=room + "-empty")
    assert empty["messages"] == [] and empty["more"] is False
    a.close()


def test_presence_and_diffs(server, room):
    a = server.ws("ann")
    a.join(room)
    p = a.call("presence", room=room, ref=5)
    assert p["op"] == "presence" and p["ref"] == 5 and p["room"] == room
    assert [m["user"] for m in p["members"]] == ["ann"] and isinstance(p["members"][0]["since"], int)

    b1 = server.ws("bo")
    b1.join(room)
    d = a.wait(op="presence_diff", room=room)
    assert d["joins"] == ["bo"] and d["leaves"] == [], d

    # A second connection of the same user changes nothing for the others.
    b2 = server.ws("bo")
    b2.join(room)
    p = a.call("presence", room=room)
    assert sorted(m["user"] for m in p["members"]) == ["ann", "bo"], p
    assert not [m for m in a.pending if m.get("op") == "presence_diff"], list(a.pending)

    # bo leaves with one connection: still present.
    assert b2.call("leave", room=room)["op"] == "left"
    p = a.call("presence", room=room)
    assert sorted(m["user"] for m in p["members"]) == ["ann", "bo"], p
    assert not [m for m in a.pending if m.get("op") == "presence_diff"], list(a.pending)

    # bo's last connection disconnects: bo leaves.
    b1.close()
    d = a.wait(op="presence_diff", room=room)
    assert d["joins"] == [] and d["leaves"] == ["bo"], d

    # An explicit leave is announced as well.
    c = server.ws("cy")
    c.join(room)
    assert a.wait(op="presence_diff", room=room)["joins"] == ["cy"]
    c.call("leave", room=room)
    assert a.wait(op="presence_diff", room=room)["leaves"] == ["cy"]
    p = a.call("presence", room=room)
    assert [m["user"] for m in p["members"]] == ["ann"], p
    a.close()
    b2.close()
    c.close()


def test_ping_pong(server):
    a = server.ws("ann")
    assert a.call("ping", ref="p1") == {"op": "pong", "ref": "p1"}
    a.send({"op": "ping"})
    assert a.recv() == {"op": "pong"}
    a.close()


def error_of(client, payload, binary=False, timeout=5.0):
    if binary:
        client.conn.send(payload)
    else:
        client.send(payload)
    return client.wait(op="error", timeout=timeout)


@pytest.mark.parametrize(
    "payload,has_ref",
    [
        ("{not json", False),
        ('{"op":"fly","ref":"u1"}', True),
        ('{"ref":"u2"}', True),
        ('{"op":"join","room":"bad room!","ref":"u3"}', True),
        ('{"op":"join","room":"' + "r" * 129 + '","ref":"u4"}', True),
        ('{"op":"join","ref":"u5"}', True),
        ('{"op":"send","room":"x","ref":"u6"}', True),
        ('{"op":"send","room":"x","body":1,"id":"' + "i" * 65 + '","ref":"u7"}', True),
        ('[1,2,3]', False),
        ('"just a string"', False),
        ('{"op":"history","room":"x","before":"abc","ref":"u8"}', True),
    ],
    ids=["bad-json", "unknown-op", "no-op", "bad-room", "long-room", "join-no-room", "send-no-body",
         "long-id", "array", "string", "bad-before"],
)
def test_bad_request(server, payload, has_ref):
    a = server.ws("ann")
    e = error_of(a, payload)
    assert e["code"] == "bad_request" and isinstance(e["message"], str) and e["message"], e
    if has_ref:
        assert e.get("ref") == json.loads(payload)["ref"], e
    # The connection stays open after an error.
    assert a.call("ping")["op"] == "pong"
    a.close()


def test_binary_frame_bad_request(server):
    a = server.ws("ann")
    e = error_of(a, b'{"op":"ping"}', binary=True)
    assert e["code"] == "bad_request", e
    assert a.call("ping")["op"] == "pong"
    a.close()


def test_not_joined(server, room):
    a = server.ws("ann")
    e = a.call("leave", room=room, ref="l1")
    assert e["op"] == "error" and e["code"] == "not_joined" and e["ref"] == "l1", e
    assert a.call("ping")["op"] == "pong"
    a.close()


def test_rate_limited(start_server, room):
    srv = start_server("--send-rate", "5", "--send-burst", "5")
    a = srv.ws("ann")
    for i in range(20):
        a.send({"op": "send", "room": room, "body": i, "ref": i})
    replies = {}
    while len(replies) < 20:
        m = a.wait(lambda m: m.get("op") in ("ack", "error"), timeout=5)
        replies[m["ref"]] = m
    acks = [m for m in replies.values() if m["op"] == "ack"]
    limited = [m for m in replies.values() if m["op"] == "error"]
    assert 5 <= len(acks) <= 7, f"{len(acks)} of 20 sent passed a 5/5 bucket"
    for e in limited:
        assert e["code"] == "rate_limited", e
        assert isinstance(e.get("retry_after_ms"), int) and 0 < e["retry_after_ms"] <= 1000, e
    # The bucket refills: after waiting, sends pass again.
    time.sleep(max(e["retry_after_ms"] for e in limited) / 1000 + 0.3)
    assert a.call("send", room=room, body="later")["op"] == "ack"
    a.close()


def test_too_large_closes_1009(start_server):
    srv = start_server("--max-message-bytes", "1024")
    a = srv.ws("ann")
    a.send(json.dumps({"op": "send", "room": "big", "body": "x" * 2000}))
    code, reason, _ = a.closed(5)
    assert code == 1009, (code, reason)


def test_dedup(server, room):
    a, b = server.ws("ann"), server.ws("bo")
    b.join(room)
    first = a.call("send", room=room, body="one", id="m-1", ref="r1")
    again = a.call("send", room=room, body="changed", id="m-1", ref="r2")
    assert first["op"] == "ack" and again["op"] == "ack", (first, again)
    assert again["ref"] == "r2" and again["seq"] == first["seq"] and again["ts"] == first["ts"], (first, again)
    assert again.get("id") == "m-1"
    nxt = a.call("send", room=room, body="two", id="m-2")
    assert nxt["seq"] == first["seq"] + 1
    got = msgs_of(b, room, 2)
    assert [(m["seq"], m["body"]) for m in got] == [(1, "one"), (2, "two")], got
    assert [m for m in b.drain(0.3) if m.get("op") == "msg"] == []
    # Another user's identical id is a different message.
    c = server.ws("cy")
    other = c.call("send", room=room, body="cy's", id="m-1")
    assert other["seq"] == 3
    a.close()
    b.close()
    c.close()


def test_join_since_replays(server, room):
    a = server.ws("ann")
    send_n(a, room, 5)
    b = server.ws("bo")
    j = b.call("join", room=room, since=2)
    assert j["op"] == "joined" and j["seq"] == 5 and j["recovered"] is True, j
    got = msgs_of(b, room, 3)
    assert [m["seq"] for m in got] == [3, 4, 5]
    assert [m["body"] for m in got] == [{"i": 2}, {"i": 3}, {"i": 4}]
    a.call("send", room=room, body="live")
    assert b.wait(op="msg", room=room)["seq"] == 6
    # since == last seq replays nothing.
    c = server.ws("cy")
    j = c.call("join", room=room, since=6)
    assert j["recovered"] is True and j["seq"] == 6
    assert [m for m in c.drain(0.3) if m.get("op") == "msg"] == []
    # since=0 replays everything.
    d = server.ws("di")
    j = d.call("join", room=room, since=0)
    assert j["recovered"] is True
    assert [m["seq"] for m in msgs_of(d, room, 6)] == [1, 2, 3, 4, 5, 6]
    for c_ in (a, b, c, d):
        c_.close()


@pytest.mark.timeout(60)
def test_join_since_under_load_no_gap_no_dup(start_server, room):
    srv = start_server("--send-rate", "0", "--history-tail", "2000", "--threads", "4")
    sender = srv.ws("ann")
    total = 400
    started = threading.Event()

    def blast():
        for i in range(total):
            sender.send({"op": "send", "room": room, "body": i})
            if i == 100:
                started.set()
            if i % 50 == 0:
                time.sleep(0.01)

    t = threading.Thread(target=blast)
    t.start()
    started.wait(10)
    # Join only once the room has passed every `since` used below.
    probe = srv.ws("probe")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = probe.call("history", room=room, limit=1)
        if h["messages"] and h["messages"][-1]["seq"] >= 60:
            break
        time.sleep(0.02)
    probe.close()
    joiners = []
    for k, since in enumerate([5, 50, 0]):
        c = srv.ws(f"j{k}")
        j = c.call("join", room=room, since=since, timeout=10)
        assert j["recovered"] is True, j
        joiners.append((c, since))
    t.join(30)
    for c, since in joiners:
        seen = [m["seq"] for m in msgs_of(c, room, total - since, timeout=10)]
        assert seen == list(range(since + 1, total + 1)), f"since={since}: gap or duplicate near {_first_bad(seen, since)}"
        assert [m for m in c.drain(0.3) if m.get("op") == "msg"] == [], "duplicate after the end"
        c.close()
    sender.close()


def _first_bad(seen, since):
    for i, s in enumerate(seen):
        if s != since + 1 + i:
            return seen[max(0, i - 3): i + 3]
    return None


def test_join_since_past_max_replay(start_server, room):
    srv = start_server("--send-rate", "0", "--max-replay", "5")
    a = srv.ws("ann")
    send_n(a, room, 20)
    b = srv.ws("bo")
    j = b.call("join", room=room, since=2)
    assert j["op"] == "joined" and j["seq"] == 20 and j["recovered"] is False, j
    a.call("send", room=room, body="live")
    m = b.wait(op="msg", room=room)
    assert m["seq"] == 21, f"nothing should be replayed past --max-replay, got seq {m['seq']}"
    # Within the cap, replay happens.
    c = srv.ws("cy")
    j = c.call("join", room=room, since=17)
    assert j["recovered"] is True
    assert [m["seq"] for m in msgs_of(c, room, 4)] == [18, 19, 20, 21]
    # Paging with history after the unrecovered join covers the gap.
    h = b.call("history", room=room, after=2, limit=1000)
    assert [m["seq"] for m in h["messages"]] == list(range(3, 22))
    for c_ in (a, b, c):
        c_.close()


def test_messages_survive_sender_disconnect(server, room):
    a, b = server.ws("ann"), server.ws("bo")
    b.join(room)
    for i in range(50):
        a.send({"op": "send", "room": room, "body": i})
    a.close()
    got = msgs_of(b, room, 50)
    assert [m["seq"] for m in got] == list(range(1, 51))
    b.close()


def test_raw_client_binary_then_text(server):
    r = server.raw_ws("ann")
    r.send_frame(OP_BINARY, b"\x00\x01")
    e = r.recv_json()
    assert e["op"] == "error" and e["code"] == "bad_request", e
    r.send_json({"op": "ping", "ref": 1})
    assert r.recv_json() == {"op": "pong", "ref": 1}
    r.close()
