"""Several nodes as one gateway: publishes through non-owners, an owner killed and restarted,
partitions through a fault proxy, resume across nodes, refused hellos, retries over a broken
link, the cluster's view and metrics, and the bus tap.

The first tests check the harness itself (the fault proxy, the owner hash, the config files)
and need no server."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from cluster import (
    NODE_METRICS, PEER_METRICS, SECRET, Cluster, ClusterPublisher, Member, check_room, owner,
    owner_history, rooms_owned_by, wait_for, weight, _runs,
)
from faultproxy import FaultProxy
from helpers import HOST, assert_json_error, free_port, mint_token

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bus_subscriber.py"
DURABLE = ("--send-rate", "0", "--durability", "immediate")


# --------------------------------------------------------------------------- harness checks


class EchoServer(threading.Thread):
    """Echoes every byte on every connection; on end-of-file it closes. Counts connections and
    the bytes it received."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.received = 0
        self.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                self.received += len(data)
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def _connect(port, timeout=3.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _recv_exact(s, n, timeout=5.0):
    s.settimeout(timeout)
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, f"closed after {len(out)} of {n} bytes"
        out += chunk
    return out


def _nothing_within(s, seconds) -> bool:
    """True if no byte and no close arrive on `s` within `seconds`."""
    s.settimeout(seconds)
    try:
        data = s.recv(1)
    except socket.timeout:
        return True
    raise AssertionError(f"expected silence, got {data!r}")


def _broken(s, timeout=3.0) -> bool:
    """True if `s` is closed or reset by the other end within `timeout`."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionError:
        return True
    except socket.timeout:
        return False


def test_faultproxy_pass_stall_cut():
    echo = EchoServer()
    proxy = FaultProxy(echo.port).start()
    try:
        assert proxy.mode == "pass" and proxy.addr == f"tcp://{HOST}:{proxy.port}"
        s = _connect(proxy.port)
        s.sendall(b"hello")
        assert _recv_exact(s, 5) == b"hello"

        # A megabyte both ways, written while read: nothing lost, reordered or stuck.
        blob = random.Random(1).randbytes(1 << 20)
        t = threading.Thread(target=s.sendall, args=(blob,), daemon=True)
        t.start()
        assert _recv_exact(s, len(blob), timeout=20) == blob
        t.join(5)

        # Stall: bytes are held both ways, the sockets stay open, and even a new connection waits.
        proxy.stall()
        accepted = echo.accepted
        received = echo.received
        s.sendall(b"held")
        s2 = _connect(proxy.port)
        s2.sendall(b"late")
        assert _nothing_within(s, 0.5) and _nothing_within(s2, 0.2)
        assert echo.received == received, "bytes crossed a stalled proxy"
        assert echo.accepted == accepted, "a stalled proxy dialled the target"
        proxy.pass_()
        assert _recv_exact(s, 4) == b"held" and _recv_exact(s2, 4) == b"late"
        wait_for(lambda: echo.accepted == accepted + 1, 5, "the held connection to reach the target")

        # An end-of-file sent during a stall is held behind the bytes before it.
        proxy.stall()
        s2.sendall(b"bye")
        s2.shutdown(socket.SHUT_WR)
        received = echo.received
        assert _nothing_within(s2, 0.4)
        assert echo.received == received
        proxy.pass_()
        assert _recv_exact(s2, 3) == b"bye"
        assert _broken(s2), "the target's close after end-of-file did not come back"
        s2.close()

        # Cut: open connections are reset at once, new ones too, and the target sees none of them.
        proxy.cut()
        assert _broken(s), "an open connection survived a cut"
        s.close()
        accepted = echo.accepted
        refused = proxy.refused
        try:
            s3 = _connect(proxy.port)
            s3.sendall(b"x")
            assert _broken(s3), "a connection made during a cut was not reset"
            s3.close()
        except ConnectionError:
            pass  # reset before connect returned: refused as well
        wait_for(lambda: proxy.refused > refused, 5, "the proxy to count the refused connection")
        assert echo.accepted == accepted, "a cut proxy reached the target"

        proxy.pass_()
        s4 = _connect(proxy.port)
        s4.sendall(b"again")
        assert _recv_exact(s4, 5) == b"again"
        assert proxy.open == 1
        with pytest.raises(ValueError):
            proxy.set_mode("drop")
        s4.close()
        wait_for(lambda: proxy.open == 0, 5, "the closed connection to leave the proxy")
    finally:
        proxy.close()
        echo.close()
    with pytest.raises(OSError):
        _connect(proxy.port, timeout=1).close()


def test_faultproxy_target_down():
    """A target that refuses: the client's connection through the proxy is reset, not left hanging."""
    port = free_port()
    with FaultProxy(port) as proxy:
        try:
            s = _connect(proxy.port)
        except ConnectionError:
            return  # reset before connect returned
        assert _broken(s, 5)
        s.close()


def test_faultproxy_carries_nng():
    """nng push/pull through the proxy: held while stalled, delivered in order after, and the
    dialer's reconnection after a cut goes through once the proxy passes again."""
    import pynng

    real = free_port()
    with pynng.Pull0(listen=f"tcp://{HOST}:{real}") as pull, FaultProxy(real) as proxy, pynng.Push0() as push:
        pull.recv_timeout = 200
        push.send_timeout = 300
        push.reconnect_time_min = 50
        push.reconnect_time_max = 200
        push.dial(proxy.addr, block=False)

        def recv_for(seconds):
            out, end = [], time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    out.append(pull.recv())
                except pynng.Timeout:
                    pass
            return out

        push.send(b"1")
        assert recv_for(0.5) == [b"1"]
        proxy.stall()
        push.send(b"2")
        push.send(b"3")
        assert recv_for(0.6) == []
        proxy.pass_()
        assert recv_for(0.6) == [b"2", b"3"]
        proxy.cut()
        assert recv_for(0.6) == []
        wait_for(lambda: proxy.refused > 0, 5, "the dialer to try again during the cut")
        proxy.pass_()
        got, end = [], time.monotonic() + 10
        while time.monotonic() < end and b"5" not in got:
            try:
                push.send(b"5")
            except pynng.Timeout:
                pass
            got += recv_for(0.2)
        assert b"5" in got, f"no message after the cut healed: {got}"


def test_owner_hash_matches_the_server():
    # Values of the server's own `weight` (src/cluster/ring.rs), compiled alone and run.
    assert weight("a", "lobby") == 0x544D923DF75E0D75
    assert weight("b", "lobby") == 0x55EF2560D18DEDA0
    assert weight("c", "lobby") == 0x910E42B9D2223AEB
    assert weight("a", "") == 0x193F1020AF076DB5
    assert weight("node-1", "room-42") == 0x3F5BC23A0C9E1560
    assert weight("x", "r0") == 0x00F53B40597DD3CA
    expect = {"lobby": "c", "room-0": "c", "room-1": "c", "room-2": "b", "room-3": "c", "room-4": "a",
              "room-5": "c", "r7": "c", "general": "a"}
    for room, node in expect.items():
        assert owner(room, ["a", "b", "c"]) == node, room
        assert owner(room, ["c", "b", "a"]) == node, f"{room}: the order of the list changed the owner"
    counts = collections.Counter(owner(f"room-{i}", "abc") for i in range(3000))
    assert all(800 < counts[n] < 1200 for n in "abc"), counts
    for node in "abc":
        for r in rooms_owned_by(node, "abc", "t1-x", 5):
            assert owner(r, "abc") == node


def test_cluster_config_files(tmp_path):
    cl = Cluster(None, tmp_path, ("a", "b", "c"), down_after="1s", proxied=("b",))
    try:
        docs = {}
        for n in cl.nodes.values():
            n.write_config()
            docs[n.id] = tomllib.loads(n.config_path.read_text())["cluster"]
        lists = [d["nodes"] for d in docs.values()]
        assert all(x == lists[0] for x in lists), "nodes got different node lists"
        assert [e["id"] for e in lists[0]] == ["a", "b", "c"]
        for i, d in docs.items():
            assert d["node-id"] == i and d["secret"] == SECRET and d["down-after"] == "1s"
        b_addr = {e["id"]: e["addr"] for e in lists[0]}["b"]
        assert b_addr == f"tcp://{HOST}:{cl['b'].proxy.port}"
        assert docs["b"]["listen"] == f"tcp://{HOST}:{cl['b'].real_nng_port}" != b_addr
        assert "listen" not in docs["a"] and "listen" not in docs["c"]
        assert cl["b"].proxy.target_port == cl["b"].real_nng_port
    finally:
        for n in cl.nodes.values():
            if n.proxy:
                n.proxy.close()


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def make_cluster(start_server, tmp_path):
    made = []

    def make(ids=("a", "b", "c"), **kw):
        cl = Cluster(start_server, tmp_path / f"cluster{len(made)}", ids, **kw)
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.close()


def auth(user="ann"):
    return {"Authorization": f"Bearer {mint_token(user)}"}


def progress(pubs, n: int = 10, timeout: float = 20.0):
    """Until every publisher in `pubs` got `n` more acks than now."""
    base = {p: p.n_acked() for p in pubs}
    wait_for(lambda: all(p.n_acked() >= base[p] + n for p in pubs), timeout,
             lambda: "publishers to progress: " + ", ".join(
                 f"{p.prefix} on {p.node_id}: {base[p]}->{p.n_acked()} (unavailable {p.unavailable}, "
                 f"problems {p.problems[:2]}, dropped {p.dropped})" for p in pubs))


def finish_all(threads):
    errors = []
    for t in threads:
        try:
            t.finish()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, errors


def assert_unavailable(node, room, tag):
    """Every request for `room` on `node` answers `unavailable` (WebSocket) or 503 (HTTP)."""
    c = node.ws(f"probe-{tag}")
    try:
        for op, fields in (("send", {"body": "probe", "id": f"probe-{tag}"}), ("history", {}),
                           ("presence", {}), ("join", {})):
            r = c.call(op, room=room, **fields)
            assert r.get("op") == "error" and r.get("code") == "unavailable", (
                f"{op} of {room} on {node.id} while its owner is down: {r}")
            assert isinstance(r.get("retry_after_ms"), int) and r["retry_after_ms"] >= 0, r
            assert isinstance(r.get("message"), str) and r["message"], r
    finally:
        c.close()
    for method, path, body in (("POST", f"/v1/rooms/{room}/messages", {"body": "probe", "id": f"probe-h-{tag}"}),
                               ("GET", f"/v1/rooms/{room}/messages", None),
                               ("GET", f"/v1/rooms/{room}/presence", None)):
        r = node.request(method, path, body=body, headers=auth(f"probe-{tag}"))
        assert_json_error(r, 503, "unavailable")
        ra = r.header("retry-after")
        assert ra is not None and ra.isdigit(), f"{method} {path}: 503 without a Retry-After in seconds: {r}"


def presence_users(node, room) -> set:
    c = node.ws("presence-probe")
    try:
        r = c.call("presence", room=room)
    finally:
        c.close()
    assert r.get("op") == "presence", r
    return {m["user"] for m in r["members"]}


# --------------------------------------------------------------------------- (a) one gateway


@pytest.mark.timeout(120)
def test_publish_through_non_owners(make_cluster, room):
    cl = make_cluster().start()
    rooms = {o: cl.rooms(o, room)[0] for o in cl.ids}
    members = [Member(cl[n], r, f"m-{n}-{o}") for o, r in rooms.items() for n in cl.ids]
    pubs = []
    for o, r in rooms.items():
        for n in cl.ids:
            limit = 50 if n == o else 150
            pubs.append(ClusterPublisher(cl[n], r, f"p{n}{o}", user=f"u-{n}", window=8, interval=0, limit=limit))
    for p in pubs:
        p.start()
    posted = {r: {} for r in rooms.values()}
    try:
        # HTTP publishes through the non-owners too, while the WebSocket ones run.
        for k in range(10):
            for o, r in rooms.items():
                via = cl[cl.ids[(cl.ids.index(o) + 1 + k % 2) % len(cl.ids)]]
                mid = f"h{via.id}{k}"
                resp = via.request("POST", f"/v1/rooms/{r}/messages", body={"body": {"http": k}, "id": mid},
                                   headers=auth(f"h-{via.id}"))
                assert resp.status == 201, resp
                doc = resp.json()
                assert doc["room"] == r and isinstance(doc["seq"], int) and isinstance(doc["ts"], int), doc
                posted[r][mid] = doc["seq"]
        # finish() stops new ids: on a slow machine the HTTP posts can be done before every
        # publisher has sent its `limit`, so wait for them (each stops by itself there).
        wait_for(lambda: all(len(p.sent) >= p.limit or p.dropped for p in pubs), 60,
                 lambda: "publishers to send all theirs: " + ", ".join(
                     f"{p.prefix} {len(p.sent)}/{p.limit}" for p in pubs))
    finally:
        finish_all(pubs)
    dropped = [p.prefix for p in pubs if p.dropped]
    assert not dropped, f"publishers disconnected: {dropped}"
    for r in rooms.values():
        hist = check_room(cl, r, pubs, members, posted=posted[r])
        assert len(hist) == 350 + 10, f"{r}: {len(hist)} stored, 360 sent"
        # Every node answers the same pages over HTTP.
        for n in cl.ids:
            page = cl[n].request("GET", f"/v1/rooms/{r}/messages?after=0&limit=1000", headers=auth()).json()
            assert page["messages"] == hist, f"{r}: GET on {n} differs from the owner's history"
            assert page["more"] is False
        # The members on all three nodes saw one order (check_room compared each to the history).
        orders = {mb.node_id: [(m["seq"], m.get("id")) for m in mb.msgs] for mb in members if mb.room == r}
        assert len({json.dumps(v) for v in orders.values()}) == 1
        # Presence is cluster-wide: each room lists its members of all three nodes.
        for n in cl.ids:
            users = presence_users(cl[n], r)
            assert {f"m-{x}-{cl.owner(r).id}" for x in cl.ids} <= users, (r, n, users)
    for n in cl.ids:
        m = cl[n].metrics()
        for peer in cl.ids:
            if peer != n:
                assert m.total("roomcast_cluster_records_sent_total", peer=peer) > 0, (n, peer)
                assert m.total("roomcast_cluster_records_received_total", peer=peer) > 0, (n, peer)
        assert m.total("roomcast_cluster_bad_frames_total") == 0
    finish_all(members)


# --------------------------------------------------------------------------- (b) kill -9 of an owner


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_owner_killed_and_restarted_ten_rounds(make_cluster, room):
    cl = make_cluster(flags=DURABLE).start()
    victim, others = "c", ["a", "b"]
    vrooms = cl.rooms(victim, room, 2)
    # A room of the victim that no node has members of: nothing cached anywhere can answer for it.
    vprobe = cl.rooms(victim, room + "-q")[0]
    aroom = cl.rooms("a", room + "-p")[0]
    members = [Member(cl[n], r, f"m-{n}-{i}") for i, r in enumerate(vrooms) for n in others]
    watch = Member(cl["a"], aroom, "watch-a")
    members += [watch, Member(cl["b"], aroom, "m-b-p")]
    pubs = [ClusterPublisher(cl[n], r, f"k{n}{i}", user=f"u{n}{i}", window=4, interval=0.003)
            for i, r in enumerate(vrooms) for n in others]
    pubs.append(ClusterPublisher(cl["b"], aroom, "kbp", user="ubp", window=4, interval=0.005))
    for p in pubs:
        p.start()
    probes = []
    try:
        for rnd in range(10):
            progress(pubs, 10)
            ghost_user = f"ghost{rnd}"
            ghost = cl[victim].ws(ghost_user)
            ghost.join(aroom)
            wait_for(lambda: watch.seen_join(ghost_user), 10, f"round {rnd}: {ghost_user}'s presence on a")
            cl.kill(victim)
            for n in others:
                cl.wait_peer(n, victim, up=False)
            wait_for(lambda: watch.seen_leave(ghost_user), 10,
                     f"round {rnd}: {ghost_user} (on the killed node) to leave {aroom}")
            probe_on = cl[others[rnd % 2]]
            assert_unavailable(probe_on, vprobe, f"{rnd}")
            # Sends to the rooms that have members on the probed node are refused as well.
            c = probe_on.ws(f"probe-{rnd}")
            r = c.call("send", room=vrooms[rnd % 2], body="probe", id=f"probe-m-{rnd}")
            c.close()
            assert r.get("op") == "error" and r.get("code") == "unavailable", (rnd, r)
            probes += [f"probe-{rnd}", f"probe-h-{rnd}", f"probe-m-{rnd}"]
            users = presence_users(cl["a"], aroom)
            assert ghost_user not in users and {"watch-a", "m-b-p"} <= users, (rnd, users)
            # The owner of aroom is up: it is served all along.
            progress([pubs[-1]], 5)
            ghost.close()
            cl.restart(victim)
            # The restarted owner learns again who is in its rooms on the other nodes.
            for i, r in enumerate(vrooms):
                wait_for(lambda: {f"m-a-{i}", f"m-b-{i}"} <= presence_users(cl["b"], r), 10,
                         f"round {rnd}: presence of {r} to list the members on a and b again")
        progress(pubs, 10)
    finally:
        finish_all(pubs)
    assert sum(p.unavailable for p in pubs[:-1]) > 0, "no send to the killed owner's rooms was answered unavailable"
    for r in vrooms + [aroom, vprobe]:
        stored = {m.get("id") for m in owner_history(cl, r)}
        assert not stored & set(probes), f"{r}: sends refused as unavailable were stored: {stored & set(probes)}"
        if r != vprobe:
            check_room(cl, r, pubs, members)
    finish_all(members)


# --------------------------------------------------------------------------- (c) partition


def _partition(make_cluster, room, faults):
    """a's inbound link goes through each fault of `faults` in turn, then heals. a hears nothing
    from its peers meanwhile (its own frames still reach them, but their heartbeats say they are
    not heard), so a serves its rooms to its members and b its rooms to its own; afterwards
    every member has everything once."""
    cl = make_cluster(proxied=("a",)).start()
    ra = cl.rooms("a", room + "-x")[0]
    rb = cl.rooms("b", room + "-y")[0]
    members = [Member(cl[n], r, f"m-{n}-{tag}") for r, tag in ((ra, "a"), (rb, "b")) for n in cl.ids]
    local = {"a": next(m for m in members if m.node_id == "a" and m.room == ra),
             "b": next(m for m in members if m.node_id == "b" and m.room == rb)}
    pa = ClusterPublisher(cl["a"], ra, "pa", user="ua", interval=0.005)
    pb = ClusterPublisher(cl["b"], rb, "pb", user="ub", interval=0.005)
    pubs = [pa, pb]
    for p in pubs:
        p.start()
    proxy = cl["a"].proxy
    probes = set()
    try:
        progress(pubs, 20)
        for fault in faults:
            getattr(proxy, fault)()
            # a hears nothing from its peers any more, and their heartbeats tell them so: a link
            # that works one way only is down on both sides.
            cl.wait_peer("a", "b", up=False)
            cl.wait_peer("a", "c", up=False)
            cl.wait_peer("b", "a", up=False)
            cl.wait_peer("c", "a", up=False)
            # Both sides go on serving their own rooms to their own members.
            seen = {k: m.last_seq() for k, m in local.items()}
            progress(pubs, 20)
            wait_for(lambda: all(m.last_seq() >= seen[k] + 10 for k, m in local.items()), 10,
                     f"{fault}: the owners' local members to get new messages")
            for on, target in (("a", rb), ("b", ra)):
                c = cl[on].ws(f"probe-{fault}")
                r = c.call("send", room=target, body="x", id=f"probe-{fault}-{on}")
                c.close()
                probes.add(f"probe-{fault}-{on}")
                assert r.get("op") == "error" and r.get("code") == "unavailable", (fault, on, r)
        proxy.pass_()
        cl.wait_all_up(30)
        progress(pubs, 20)
    finally:
        finish_all(pubs)
    for r in (ra, rb):
        stored = {m.get("id") for m in owner_history(cl, r)}
        assert not stored & probes, f"{r}: a send refused as unavailable was stored"
        check_room(cl, r, pubs, members, settle=30)
    for r, tag in ((ra, "a"), (rb, "b")):
        wait_for(lambda: {f"m-{n}-{tag}" for n in cl.ids} <= presence_users(cl["c"], r), 10,
                 f"presence of {r} to list its members on all three nodes after healing")
    finish_all(members)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_partition_stall_then_cut_then_heal(make_cluster, room):
    """The held bytes are lost with the connections: the links come back with new hellos."""
    _partition(make_cluster, room, ("stall", "cut"))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_partition_stall_then_heal(make_cluster, room):
    """No connection breaks: after more than down-after of silence, the frames held back reach
    a from peers it had marked down (whatever a did with those links meanwhile)."""
    _partition(make_cluster, room, ("stall",))


# --------------------------------------------------------------------------- (d) resume across nodes


@pytest.mark.timeout(120)
def test_resume_across_nodes_racing_a_sender(make_cluster, room):
    cl = make_cluster().start()
    r = cl.rooms("b", room)[0]
    sender = ClusterPublisher(cl["c"], r, "s", user="us", window=2, interval=0.02)
    sender.start()
    resumers = []
    try:
        progress([sender], 5)
        resumers.append(Member(cl["a"], r, "from-zero", since=0))
        assert resumers[-1].joined.get("recovered") is True, resumers[-1].joined
        for i in range(12):
            if i == 6:
                # From here on node a has its own member of the room (and the room's tail).
                resumers.append(Member(cl["a"], r, "keeper"))
            c1 = cl["a"].ws(f"r{i}")
            j = c1.join(r)
            got = [c1.wait(lambda m: m.get("op") == "msg", timeout=5)["seq"] for _ in range(3)]
            c1.close()
            assert got == list(range(j["seq"] + 1, j["seq"] + 4)), f"live messages after joined seq {j['seq']}: {got}"
            seen = got[-1]
            wait_for(lambda: sender.last_seq() >= seen + 3, 10, "the sender to move on")
            node = cl["a"] if i % 3 else cl["c"]
            m = Member(node, r, f"r{i}", since=seen)
            assert m.joined.get("recovered") is True, m.joined
            resumers.append(m)
        progress([sender], 5)
    finally:
        finish_all([sender])
    check_room(cl, r, [sender], resumers)
    finish_all(resumers)


# --------------------------------------------------------------------------- (e) refused hellos


def _assert_never_up(cl, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i in cl.ids:
            n = cl[i]
            assert n.alive, f"node {i} exited with {n.srv.proc.poll()}; output tail:\n{n.tail(40)}"
            ups = n.peer_up()
            others = {p for p in cl.ids if p != i}
            assert others <= set(ups), f"{i} has no peer_up line for {others - set(ups)}: {ups}"
            assert all(v == 0 for v in ups.values()), f"{i} reports a peer up despite the mismatch: {ups}"
        time.sleep(0.2)


def _assert_refused_counted(cl):
    for i in cl.ids:
        wait_for(lambda: cl[i].metrics().total("roomcast_cluster_hellos_refused_total") >= 1, 10,
                 lambda: f"{i} to count a refused hello; output:\n{cl[i].tail()}")


@pytest.mark.timeout(90)
def test_wrong_secret_is_refused(make_cluster, room):
    cl = make_cluster(ids=("a", "b"))
    cl["b"].secret = "another-secret-just-as-long"
    cl.start(wait_up=False)
    _assert_never_up(cl, 3.0)
    _assert_refused_counted(cl)
    # a serves its own rooms, and b's answer unavailable there.
    ra, rb = cl.rooms("a", room)[0], cl.rooms("b", room)[0]
    c = cl["a"].ws("u")
    assert c.call("send", room=ra, body=1).get("op") == "ack"
    r = c.call("send", room=rb, body=1)
    assert r.get("op") == "error" and r.get("code") == "unavailable", r
    c.close()
    # The same nodes sharing one secret link up: the secret was the refusal's reason.
    cl["b"].secret = None
    cl.restart("b")


@pytest.mark.timeout(90)
def test_different_node_list_is_refused(make_cluster):
    cl = make_cluster(ids=("a", "b"))
    cl["b"].nodes_override = cl.node_list() + [("x", f"tcp://{HOST}:{free_port()}")]
    cl.start(wait_up=False)
    _assert_never_up(cl, 3.0)
    _assert_refused_counted(cl)


# --------------------------------------------------------------------------- (f) retry over a broken link


def _reply(client, ref, timeout):
    try:
        return client.wait(lambda m: m.get("ref") == ref and m.get("op") != "msg", timeout=timeout)
    except TimeoutError:
        return None


def _stored(node, room, mid):
    c = node.ws("looker")
    try:
        r = c.call("history", room=room, limit=1000)
    finally:
        c.close()
    assert r.get("op") == "history", r
    return next((m for m in r["messages"] if m.get("id") == mid), None)


@pytest.mark.timeout(120)
def test_idempotent_retry_over_a_broken_link(make_cluster, room):
    cl = make_cluster(proxied=("a", "b")).start()
    r = cl.rooms("a", room)[0]
    watchers = [Member(cl["c"], r, "w-c"), Member(cl["b"], r, "w-b")]
    cli = cl["b"].ws("retrier")
    assert cli.call("send", room=r, id="k0", body="zero").get("op") == "ack"

    # 1. The forward is lost: a's inbound link stalls, then breaks.
    cl["a"].proxy.stall()
    cli.send({"op": "send", "room": r, "id": "k1", "ref": "k1-first", "body": "one"})
    first = _reply(cli, "k1-first", 3)
    cl["a"].proxy.cut()
    if first is None:
        first = _reply(cli, "k1-first", 5)
    assert first is None or first.get("code") == "unavailable", f"k1 crossed a stalled link? {first}"
    assert _stored(cl["a"], r, "k1") is None
    cl["a"].proxy.pass_()
    cl.wait_all_up(30)
    ack1 = cli.call("send", room=r, id="k1", body="one", timeout=10)
    assert ack1.get("op") == "ack", ack1
    assert _stored(cl["a"], r, "k1")["seq"] == ack1["seq"]

    # 2. The forward arrives and is stored, its ack is lost: b's inbound link stalls, then breaks.
    cl["b"].proxy.stall()
    cli.send({"op": "send", "room": r, "id": "k2", "ref": "k2-first", "body": "two"})
    stored = wait_for(lambda: _stored(cl["a"], r, "k2"), 10, "k2 to be stored on its owner")
    first = _reply(cli, "k2-first", 5)
    assert first is None or first.get("code") == "unavailable", f"an ack crossed a stalled link? {first}"
    cl["b"].proxy.cut()
    time.sleep(0.5)
    cl["b"].proxy.pass_()
    cl.wait_all_up(30)
    late = _reply(cli, "k2-first", 1)
    assert late is None or late.get("code") == "unavailable" or (
        late.get("op") == "ack" and late["seq"] == stored["seq"]), late
    ack2 = cli.call("send", room=r, id="k2", body="two", timeout=10)
    assert ack2.get("op") == "ack", ack2
    assert (ack2["seq"], ack2["ts"]) == (stored["seq"], stored["ts"]), (
        f"the retry of k2 got {ack2}, the stored copy is {stored}")
    cli.close()
    hist = check_room(cl, r, members=watchers, posted={"k0": 1, "k1": ack1["seq"], "k2": stored["seq"]})
    assert [m["id"] for m in hist] == ["k0", "k1", "k2"], hist
    finish_all(watchers)


# --------------------------------------------------------------------------- (g) view and metrics


@pytest.mark.timeout(90)
def test_cluster_view_metrics_and_healthz(make_cluster):
    cl = make_cluster().start()
    a = cl["a"]
    assert_json_error(a.request("GET", "/v1/cluster"), 401, "unauthorized")
    assert_json_error(a.request("GET", "/v1/cluster", headers=auth("ann")), 403, "forbidden")
    view = a.cluster_view()
    assert view["node"] == "a", view
    assert isinstance(view["incarnation"], str) and view["incarnation"], view
    peers = {p["id"]: p for p in view["peers"]}
    assert set(peers) == {"b", "c"}, view
    for pid, p in peers.items():
        assert p["addr"] == cl[pid].addr and p["state"] == "up", p
    m = a.metrics()
    for name in PEER_METRICS:
        for pid in ("b", "c"):
            assert m.get(name, peer=pid), f"/metrics has no {name}{{peer={pid!r}}}"
    for name in NODE_METRICS:
        assert m.get(name), f"/metrics has no {name}"
        assert m.total(name) == 0, (name, m.total(name))
    for pid in ("b", "c"):
        assert m.total("roomcast_cluster_frames_sent_total", peer=pid) > 0
        assert m.total("roomcast_cluster_frames_received_total", peer=pid) > 0
    before = cl["c"].cluster_view()["incarnation"]

    cl.kill("c")
    cl.wait_peer("a", "c", up=False)
    r = a.request("GET", "/healthz")
    assert r.status == 200, r
    peers = {p["id"]: p["state"] for p in a.cluster_view()["peers"]}
    assert peers == {"b": "up", "c": "down"}, peers

    cl.restart("c")
    after = cl["c"].cluster_view()
    assert after["node"] == "c" and after["incarnation"] != before, (before, after)
    peers = {p["id"]: p["state"] for p in a.cluster_view()["peers"]}
    assert peers == {"b": "up", "c": "up"}, peers


# --------------------------------------------------------------------------- (h) the bus tap


class BusSubscriber:
    """examples/bus_subscriber.py as a subprocess; its lines collected as they come."""

    def __init__(self, addr, prefix, count, timeout):
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), addr, "--prefix", prefix, "--count", str(count),
             "--timeout", str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()

    @staticmethod
    def _pump(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def connected(self) -> bool:
        return any(line.startswith("connected ") for line in self.err)

    def lines(self) -> list[tuple[str, int, object]]:
        out = []
        for line in list(self.out):
            room, seq, body = line.split(" ", 2)
            out.append((room, int(seq), json.loads(body)))
        return out

    def wait(self, timeout) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the subscriber did not exit; stderr {self.err[-5:]}, {len(self.out)} lines")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.mark.timeout(90)
def test_bus_tap_publishes_each_owners_rooms(make_cluster, room):
    cl = make_cluster(bus=True).start()
    ra = cl.rooms("a", room, 2)
    rb = cl.rooms("b", room)[0]
    count = 20
    subs = {"a": BusSubscriber(cl["a"].bus_addr, f"room/{room}", count, 40),
            "b": BusSubscriber(cl["b"].bus_addr, f"room/{rb}", count, 40)}
    senders = {n: cl[n].ws(f"bus-{n}") for n in ("b", "c")}
    try:
        for n, s in subs.items():
            wait_for(s.connected, 15, lambda: f"the subscriber of {n}'s bus to connect: {s.err}")
        # What is published before the publisher side has the subscriber is not kept: warm up.
        k = 0
        wait_until = time.monotonic() + 15
        while not (subs["a"].out and subs["b"].out):
            assert time.monotonic() < wait_until, f"nothing came on the bus: {[s.err for s in subs.values()]}"
            for target in (ra[0], rb):
                r = senders["c"].call("send", room=target, body={"warm": k})
                assert r.get("op") == "ack", r
            k += 1
            time.sleep(0.05)
        # Publishes through non-owners, into a's two rooms and b's room.
        for i in range(30):
            for target, via in ((ra[0], "c"), (ra[1], "b"), (rb, "c")):
                r = senders[via].call("send", room=target, body={"n": i, "via": via})
                assert r.get("op") == "ack", r
        codes = {n: s.wait(30) for n, s in subs.items()}
        assert codes == {"a": 0, "b": 0}, (codes, {n: s.err for n, s in subs.items()})
    finally:
        for s in subs.values():
            s.kill()
        for c in senders.values():
            c.close()
    for n, s in subs.items():
        lines = s.lines()
        assert len(lines) == count, lines
        want_rooms = set(ra) if n == "a" else {rb}
        assert {ln[0] for ln in lines} <= want_rooms, f"{n}'s bus carried rooms it does not own: {lines}"
        hist = {r: {m["seq"]: m for m in owner_history(cl, r)} for r in want_rooms}
        for rname, seq, body in lines:
            assert hist[rname][seq]["body"] == body, (rname, seq, body, hist[rname].get(seq))
        for rname in want_rooms:
            seqs = [seq for x, seq, _ in lines if x == rname]
            assert seqs == sorted(set(seqs)), f"{rname}: bus order {seqs}"


# --------------------------------------------------------------------------- a lagging peer


@pytest.mark.timeout(120)
def test_a_lagging_peer_is_resynced(make_cluster, room):
    """b stops (SIGSTOP) while a publishes far more than a's queue for b holds
    (64 KiB): a marks b lagging and drops the queue. Once b runs again, its
    member still gets every message, in order, with no gap or duplicate
    (filled from a's storage), and both sides count the resync."""
    cl = make_cluster(ids=("a", "b"), down_after="5s",
                      flags=("--send-rate", "0", "--cluster-queue-bytes", "64KiB")).start()
    r = cl.rooms("a", room)[0]
    member = Member(cl["b"], r, "mb")
    before = {n: cl[n].metrics().total("roomcast_cluster_resyncs_total") for n in ("a", "b")}
    body = "x" * 30_000
    n = 120
    pub = cl["a"].ws("pa")
    os.kill(cl["b"].srv.proc.pid, signal.SIGSTOP)
    try:
        for i in range(n):
            pub.send({"op": "send", "room": r, "ref": i, "body": {"i": i, "pad": body}})
        acks = 0
        deadline = time.monotonic() + 30
        while acks < n and time.monotonic() < deadline:
            m = pub.wait(lambda m: m.get("op") in ("ack", "error"), timeout=10)
            assert m.get("op") == "ack", m
            acks += 1
        # While b is stopped, a's queue for it passed 64 KiB: a marked it
        # lagging (dropped the queue, resynced) on its own.
        wait_for(lambda: cl["a"].metrics().total("roomcast_cluster_resyncs_total") > before["a"], 10,
                 lambda: f"a to mark b lagging; a: {cl['a'].tail()}")
    finally:
        os.kill(cl["b"].srv.proc.pid, signal.SIGCONT)
    pub.close()
    wait_for(lambda: member.last_seq() >= n, 30,
             lambda: f"b's member at {member.last_seq()} of {n}; a: {cl['a'].tail()}\nb: {cl['b'].tail()}")
    member.finish()
    seqs = [m["seq"] for m in member.msgs]
    assert seqs == list(range(1, n + 1)), f"b's member saw {_runs(seqs)}"
    assert [m["body"]["i"] for m in member.msgs] == list(range(n))
    after = {n_: cl[n_].metrics().total("roomcast_cluster_resyncs_total") for n_ in ("a", "b")}
    assert after["a"] > before["a"] and after["b"] > before["b"], (before, after)
    assert not member.problems and not member.dropped
