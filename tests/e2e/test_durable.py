"""Durable rooms: restart, resume from memory and disk, history paging through disk, dedup across
restarts, retention, and the data directory's lock and format checks."""

from __future__ import annotations

import time

import pytest

from helpers import Publisher, Watcher, full_history, kill_server, mint_token, stop_server


def auth(user="ann"):
    return {"Authorization": f"Bearer {mint_token(user)}"}


def publish(c, room, n, prefix="m", start=0, timeout=15.0):
    """Sends `n` messages pipelined (ids `<prefix>-<i>`, body {"i": i}); returns their acks in send order."""
    refs = {}
    for i in range(start, start + n):
        ref = f"{prefix}:{i}"
        c.send({"op": "send", "room": room, "body": {"i": i}, "id": f"{prefix}-{i}", "ref": ref})
        refs[ref] = i
    acks = {}
    while len(acks) < n:
        m = c.wait(lambda m: m.get("ref") in refs and m.get("ref") not in acks and m.get("op") != "msg",
                   timeout=timeout)
        assert m["op"] == "ack", m
        acks[m["ref"]] = m
    out = [acks[f"{prefix}:{i}"] for i in range(start, start + n)]
    seqs = [a["seq"] for a in out]
    assert seqs == sorted(seqs), f"one connection's sends took seqs out of order: {seqs}"
    return out


def msgs_of(c, room, n, timeout=10.0):
    return [c.wait(op="msg", room=room, timeout=timeout) for _ in range(n)]


def seqs(msgs):
    return [m["seq"] for m in msgs]


def no_msgs(c, room, quiet=0.5):
    return [m for m in c.drain(quiet) if m.get("op") == "msg" and m.get("room") == room]


def eventually(pred, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# --------------------------------------------------------------------------- restart


@pytest.mark.parametrize("durability", ["immediate", "none"])
def test_restart_keeps_history_and_seqs(start_server, room, durability):
    """A clean stop keeps everything, with either durability (`none` only skips the fsync)."""
    flags = ("--send-rate", "0", "--durability", durability)
    srv = start_server(*flags)
    c = srv.ws("ann")
    c.join(room)
    acks = publish(c, room, 5, "a")
    assert seqs(acks) == [1, 2, 3, 4, 5]
    other = room + "-other"
    assert seqs(publish(c, other, 3, "b")) == [1, 2, 3]
    before = full_history(c, room)
    assert seqs(before) == [1, 2, 3, 4, 5]
    c.close()

    assert stop_server(srv) == 0, "SIGTERM must exit 0"
    srv2 = start_server(*flags, data_dir=srv.data_dir)

    r = srv2.request("GET", f"/v1/rooms/{room}/presence", headers=auth())
    assert r.status == 200 and r.json()["members"] == [], f"presence must not survive a restart: {r}"
    c2 = srv2.ws("bo")
    after = full_history(c2, room)
    assert seqs(after) == seqs(before), f"history across a restart: seqs {seqs(after)}, want {seqs(before)}"
    assert after == before, "history changed across a restart"
    j = c2.join(room)
    assert j["seq"] == 5, f"joined.seq after restart: {j}"
    p = c2.call("presence", room=room)
    assert [m["user"] for m in p["members"]] == ["bo"], p
    a = c2.call("send", room=room, body="after", id="after-1")
    assert a["op"] == "ack" and a["seq"] == 6, f"next seq after a restart must be last + 1: {a}"
    m = c2.wait(op="msg", room=room)
    assert m["seq"] == 6 and m["body"] == "after" and m["from"] == "bo"
    assert seqs(publish(c2, other, 1, "c")) == [4], "the other room's seqs must continue too"
    hist = full_history(c2, room)
    assert seqs(hist) == [1, 2, 3, 4, 5, 6] and hist[:5] == before
    c2.close()


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("tail", ["default", "10"])
def test_resume_racing_a_sender(start_server, room, tail):
    """B joins with `since` while A publishes: B sees since+1.. exactly once, in order (replay, then live)."""
    flags = ["--send-rate", "0"] + ([] if tail == "default" else ["--history-tail", tail])
    srv = start_server(*flags)
    pub = Publisher(srv, room, "a", user="ann", window=8)
    pub.start()
    try:
        assert eventually(lambda: len(pub.acks) >= 300, 15), f"publisher too slow: {len(pub.acks)} acks"
        watchers = []
        for back in (250, 40, 0):
            since = pub.last_seq() - back
            w = Watcher(srv, room, user=f"bo{back}", since=since)
            assert w.joined.get("recovered") is True, w.joined
            assert w.joined["seq"] >= since, w.joined
            w.start()
            watchers.append((w, since))
            time.sleep(0.05)
        joined_seqs = [w.joined["seq"] for w, _ in watchers]
        # Keep sending for a while so each joiner gets a live stream after its replay.
        target = max(joined_seqs) + 200
        assert eventually(lambda: pub.last_seq() >= target, 15), "publisher stalled after the joins"
    finally:
        pub.finish(15)
    assert not pub.problems, pub.problems
    assert not pub.refused, f"refused sends: {list(pub.refused.items())[:5]}"
    by_seq = {s: mid for mid, (s, _) in pub.acks.items()}
    total = max(by_seq)
    assert sorted(by_seq) == list(range(1, total + 1)), "acked seqs are not contiguous"
    for w, since in watchers:
        eventually(lambda: w.msgs and w.msgs[-1]["seq"] >= total, 10)
        w.finish()
        got = seqs(w.msgs)
        want = list(range(since + 1, total + 1))
        if got != want:
            dup = sorted({s for s in got if got.count(s) > 1})[:10]
            missing = sorted(set(want) - set(got))[:10]
            pytest.fail(f"since={since} joined.seq={w.joined['seq']}: {len(got)} msgs for {len(want)}; "
                        f"duplicates {dup}, missing {missing}, first bad index "
                        f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)}")
        assert all(m.get("id") == by_seq[m["seq"]] for m in w.msgs), "a replayed msg carries the wrong id"
        w.client.close()
    pub.client.close()


def test_resume_from_disk_beyond_the_tail(start_server, room):
    srv = start_server("--send-rate", "0", "--history-tail", "10")
    a = srv.ws("ann")
    acks = publish(a, room, 100, "m")
    assert seqs(acks) == list(range(1, 101))

    b = srv.ws("bo")
    j = b.call("join", room=room, since=20)
    assert j["op"] == "joined" and j["seq"] == 100 and j.get("recovered") is True, j
    got = msgs_of(b, room, 80)
    assert seqs(got) == list(range(21, 101)), seqs(got)
    for m in got:
        i = m["seq"] - 1
        assert m["id"] == f"m-{i}" and m["body"] == {"i": i} and m["from"] == "ann", m
        assert m["ts"] == acks[i]["ts"], (m, acks[i])
    assert no_msgs(b, room, 0.3) == [], "replay went past joined.seq"
    # Live messages follow the replay.
    live = publish(a, room, 1, "live")[0]
    assert live["seq"] == 101
    assert b.wait(op="msg", room=room)["seq"] == 101

    # Inside the tail.
    c = srv.ws("cy")
    j = c.call("join", room=room, since=95)
    assert j.get("recovered") is True and j["seq"] == 101, j
    assert seqs(msgs_of(c, room, 6)) == list(range(96, 102))
    for x in (a, b, c):
        x.close()

    # After a restart the whole replay comes from disk.
    assert stop_server(srv) == 0
    srv2 = start_server("--send-rate", "0", "--history-tail", "10", data_dir=srv.data_dir)
    d = srv2.ws("dee")
    j = d.call("join", room=room, since=20)
    assert j.get("recovered") is True and j["seq"] == 101, j
    assert seqs(msgs_of(d, room, 81)) == list(range(21, 102))
    assert no_msgs(d, room, 0.3) == []
    d.close()


def test_resume_past_max_replay(start_server, room):
    srv = start_server("--send-rate", "0", "--history-tail", "10", "--max-replay", "50")
    a = srv.ws("ann")
    publish(a, room, 100, "m")

    # Exactly the cap missing: replayed.
    e = srv.ws("eve")
    j = e.call("join", room=room, since=50)
    assert j.get("recovered") is True and j["seq"] == 100, f"50 missing with --max-replay 50: {j}"
    assert seqs(msgs_of(e, room, 50)) == list(range(51, 101))

    # One more than the cap: nothing replayed, live flows.
    b = srv.ws("bo")
    j = b.call("join", room=room, since=49)
    assert j["op"] == "joined" and j["seq"] == 100 and j.get("recovered") is False, j
    b2 = srv.ws("bo2")
    j = b2.call("join", room=room, since=20)
    assert j.get("recovered") is False, j
    assert no_msgs(b, room) == [], "nothing may be replayed past the cap"
    assert no_msgs(b2, room, 0.1) == []
    publish(a, room, 1, "live")
    for x in (b, b2, e):
        m = x.wait(op="msg", room=room)
        assert m["seq"] == 101 and m["id"] == "live-0", m
    # The client catches up with history `after`.
    assert seqs(full_history(b, room, after=20, page=30)) == list(range(21, 102))
    for x in (a, b, b2, e):
        x.close()


# --------------------------------------------------------------------------- history


PAGES = [
    ({}, list(range(51, 101)), True),
    ({"limit": 10}, list(range(91, 101)), True),
    ({"before": 51}, list(range(1, 51)), False),
    ({"before": 30, "limit": 10}, list(range(20, 30)), True),
    ({"before": 11, "limit": 10}, list(range(1, 11)), False),
    ({"before": 100, "limit": 5}, list(range(95, 100)), True),
    ({"before": 1}, [], False),
    ({"after": 0, "limit": 25}, list(range(1, 26)), True),
    ({"after": 85, "limit": 10}, list(range(86, 96)), True),
    ({"after": 74, "limit": 25}, list(range(75, 100)), True),
    ({"after": 75, "limit": 25}, list(range(76, 101)), False),
    ({"after": 100}, [], False),
    ({"after": 10, "before": 20, "limit": 5}, list(range(11, 16)), True),
    ({"after": 10, "before": 20, "limit": 9}, list(range(11, 20)), False),
    ({"after": 10, "before": 20, "limit": 100}, list(range(11, 20)), False),
    ({"limit": 1000}, list(range(1, 101)), False),
    ({"limit": 5000}, list(range(1, 101)), False),
]


def _pager(srv, room, via):
    if via == "ws":
        c = srv.ws("reader")

        def page(q):
            r = c.call("history", room=room, **q)
            assert r["op"] == "history" and r["room"] == room, r
            return r

        return page, c.close
    h = auth("reader")

    def page(q):
        qs = "&".join(f"{k}={v}" for k, v in q.items())
        r = srv.request("GET", f"/v1/rooms/{room}/messages" + (f"?{qs}" if qs else ""), headers=h)
        assert r.status == 200, r
        return r.json()

    return page, lambda: None


def _check_paging(page, acks):
    for q, want, more in PAGES:
        r = page(q)
        assert seqs(r["messages"]) == want and r["more"] is more, (
            f"{q}: got seqs {seqs(r['messages'])} more={r['more']}, want {want[:3]}..{want[-3:]} more={more}")
    for m in page({"limit": 1000})["messages"]:
        i = m["seq"] - 1
        assert "op" not in m, m
        assert m["id"] == f"m-{i}" and m["body"] == {"i": i} and m["from"] == "ann"
        assert m["ts"] == acks[i]["ts"], (m, acks[i])
    # Walk both ways with a small page.
    out, before = [], None
    while True:
        r = page({"limit": 7} if before is None else {"limit": 7, "before": before})
        out = r["messages"] + out
        if not r["more"]:
            break
        before = r["messages"][0]["seq"]
    assert seqs(out) == list(range(1, 101)), "walking backwards lost or repeated messages"
    out, after = [], 0
    while True:
        r = page({"limit": 7, "after": after})
        out += r["messages"]
        if not r["more"]:
            break
        after = r["messages"][-1]["seq"]
    assert seqs(out) == list(range(1, 101)), "walking forwards lost or repeated messages"


@pytest.mark.parametrize("via", ["ws", "http"])
def test_history_paging_through_disk(start_server, room, via):
    flags = ("--send-rate", "0", "--history-tail", "10")
    srv = start_server(*flags)
    a = srv.ws("ann")
    acks = publish(a, room, 100, "m")
    a.close()
    page, close = _pager(srv, room, via)
    _check_paging(page, acks)
    close()
    # After a restart nothing is in memory: every page comes from disk.
    assert stop_server(srv) == 0
    srv2 = start_server(*flags, data_dir=srv.data_dir)
    page, close = _pager(srv2, room, via)
    _check_paging(page, acks)
    close()


# --------------------------------------------------------------------------- dedup


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_dedup_survives_restart(start_server, room, how):
    flags = ("--send-rate", "0", "--durability", "immediate")
    srv = start_server(*flags)
    c = srv.ws("ann")
    first = c.call("send", room=room, body="first", id="X")
    assert first["op"] == "ack" and first["seq"] == 1, first
    publish(c, room, 3, "m")
    r = srv.request("POST", f"/v1/rooms/{room}/messages", body={"body": "by http", "id": "H"}, headers=auth())
    assert r.status == 201 and r.json()["seq"] == 5, r
    c.close()
    if how == "sigterm":
        assert stop_server(srv) == 0
    else:
        kill_server(srv)
    srv2 = start_server(*flags, data_dir=srv.data_dir)

    w = srv2.ws("watch")
    w.join(room)
    c2 = srv2.ws("ann")
    again = c2.call("send", room=room, body="second", id="X", ref="again")
    assert again["op"] == "ack", again
    assert (again["seq"], again["ts"], again.get("id"), again["ref"]) == (first["seq"], first["ts"], "X", "again"), (
        f"a retried id after a restart must get the original ack: first {first}, again {again}")
    r = srv2.request("POST", f"/v1/rooms/{room}/messages", body={"body": "again", "id": "H"}, headers=auth())
    assert r.status == 201 and r.json()["seq"] == 5, r
    assert no_msgs(w, room) == [], "a deduplicated send must publish nothing"
    hist = full_history(c2, room)
    assert seqs(hist) == [1, 2, 3, 4, 5] and hist[0]["body"] == "first", hist
    # The window is per user: another user's X is a new message.
    other = srv2.ws("cy").call("send", room=room, body="cy's", id="X")
    assert other["op"] == "ack" and other["seq"] == 6, other
    assert w.wait(op="msg", room=room)["seq"] == 6
    w.close()
    c2.close()


def test_dedup_window_expires_across_restart(start_server, room):
    flags = ("--send-rate", "0", "--dedup-window", "1s")
    srv = start_server(*flags)
    c = srv.ws("ann")
    first = c.call("send", room=room, body=1, id="X")
    assert first["seq"] == 1, first
    c.close()
    assert stop_server(srv) == 0
    time.sleep(1.3)
    srv2 = start_server(*flags, data_dir=srv.data_dir)
    c2 = srv2.ws("ann")
    a = c2.call("send", room=room, body=2, id="X")
    assert a["op"] == "ack" and a["seq"] == 2, f"an id past the dedup window is a new message: {a}"
    c2.close()


# --------------------------------------------------------------------------- retention


def _tail(tail):
    """`default` keeps every message of these tests in the owner's memory too; `5` makes history read disk."""
    return () if tail == "default" else ("--history-tail", tail)


@pytest.mark.parametrize("tail", ["default", "5"])
def test_retain_messages(start_server, room, tail):
    flags = ("--send-rate", "0", "--retain-messages", "10", *_tail(tail))
    srv = start_server(*flags)
    c = srv.ws("ann")
    other = room + "-other"
    publish(c, room, 50, "m")
    publish(c, other, 5, "o")
    state = {}

    def pruned():
        state["h"] = full_history(c2 if "c2" in state else c, room)
        return len(state["h"]) <= 12

    assert eventually(pruned, 5), f"still {len(state['h'])} messages kept with --retain-messages 10"
    hist = state["h"]
    assert seqs(hist) == list(range(51 - len(hist), 51)), f"kept messages are not the newest, contiguous: {seqs(hist)}"
    assert len(hist) >= 10, f"retention removed too much: {seqs(hist)}"
    assert seqs(full_history(c, other)) == [1, 2, 3, 4, 5], "a small room must keep everything"
    # Seqs go on from the last one, in memory and after a restart.
    assert publish(c, room, 1, "n")[0]["seq"] == 51
    c.close()
    assert stop_server(srv) == 0
    srv2 = start_server(*flags, data_dir=srv.data_dir)
    c2 = state["c2"] = srv2.ws("ann")
    assert c2.join(room)["seq"] == 51
    assert publish(c2, room, 1, "p")[0]["seq"] == 52
    assert eventually(pruned, 5), f"after a restart: {len(state['h'])} messages kept with --retain-messages 10"
    hist = state["h"]
    assert seqs(hist) == list(range(53 - len(hist), 53)) and len(hist) >= 10, seqs(hist)
    c2.close()


def test_retention_kept_across_clean_restart(start_server, room):
    """What retention pruned stays pruned after a SIGTERM stop, without waiting for a new message."""
    flags = ("--send-rate", "0", "--retain-messages", "10", "--history-tail", "5")
    srv = start_server(*flags)
    c = srv.ws("ann")
    publish(c, room, 50, "m")
    assert eventually(lambda: len(full_history(c, room)) <= 10, 5), "not pruned before the restart"
    c.close()
    assert stop_server(srv) == 0
    srv2 = start_server(*flags, data_dir=srv.data_dir)
    c2 = srv2.ws("ann")
    state = {}

    def pruned():
        state["h"] = full_history(c2, room)
        return len(state["h"]) <= 12

    assert eventually(pruned, 5), (
        f"after a clean restart {len(state['h'])} messages are back (seqs {seqs(state['h'])[:3]}..) "
        f"with --retain-messages 10")
    assert seqs(state["h"])[-1] == 50
    c2.close()


@pytest.mark.parametrize("tail", ["default", "5"])
def test_retain_age(start_server, room, tail):
    flags = ("--send-rate", "0", "--retain-age", "2s", *_tail(tail))
    srv = start_server(*flags)
    c = srv.ws("ann")
    old = publish(c, room, 10, "old")
    time.sleep(1.0)
    young = publish(c, room, 10, "young")
    young_ts = {a["seq"]: a["ts"] for a in young}
    state = {}

    def old_gone():
        h = full_history(c, room)
        now = time.time() * 1000
        state["h"] = h
        for s, ts in young_ts.items():
            if now - ts < 1500:
                assert s in seqs(h), f"seq {s}, {now - ts:.0f} ms old, was pruned with --retain-age 2s"
        return all(m["seq"] > old[-1]["seq"] for m in h)

    assert eventually(old_gone, 6), f"messages older than 2 s still kept: {seqs(state['h'])}"
    assert seqs(state["h"]) == list(range(21 - len(state["h"]), 21)), seqs(state["h"])
    # Everything goes in the end, and the seqs still go on across a restart.
    assert eventually(lambda: full_history(c, room) == [], 6), "the young messages were never pruned"
    c.close()
    assert stop_server(srv) == 0
    srv2 = start_server(*flags, data_dir=srv.data_dir)
    c2 = srv2.ws("ann")
    assert c2.join(room)["seq"] == 20, "an emptied room must remember its last seq"
    assert publish(c2, room, 1, "n")[0]["seq"] == 21, "a seq was reused after retention emptied the room"
    c2.close()


# --------------------------------------------------------------------------- data directory


def test_locked_data_directory(start_server, room):
    srv = start_server("--send-rate", "0")
    t0 = time.monotonic()
    second = start_server("--send-rate", "0", data_dir=srv.data_dir, wait=False)
    second.exit_checked = True
    try:
        code = second.proc.wait(10)
    except Exception:
        pytest.fail(f"a second server on a data directory in use did not exit within 10 s:\n{second.output()}")
    second._close_log()
    out = second.output()
    assert code != 0, f"second server exited {code}:\n{out}"
    assert time.monotonic() - t0 < 10
    assert "in use" in out and str(srv.data_dir) in out, f"no clear message about the locked directory:\n{out}"
    # The first server is unharmed.
    c = srv.ws("ann")
    assert c.call("send", room=room, body=1)["seq"] == 1
    c.close()


def test_foreign_file_refused(start_server, tmp_path):
    data = tmp_path / "foreign"
    data.mkdir()
    junk = b"this is not a roomcast database\n" * 512
    (data / "roomcast.redb").write_bytes(junk)
    srv = start_server(data_dir=data, wait=False)
    srv.exit_checked = True
    try:
        code = srv.proc.wait(10)
    except Exception:
        pytest.fail(f"server on a foreign file neither started nor exited within 10 s:\n{srv.output()}")
    srv._close_log()
    out = srv.output()
    assert code != 0, out
    assert "roomcast.redb" in out or "not a roomcast database" in out, f"unclear message:\n{out}"
    assert "panicked" not in out, out
    assert (data / "roomcast.redb").read_bytes() == junk, "the server changed a file it refused"
