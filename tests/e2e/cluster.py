"""Several `roomcast serve` processes configured as one cluster, and the clients that test it.

- `owner(room, ids)`: the node owning a room, by the same rendezvous hash as the server
  (FNV-1a 64 over `id 0xff room`, then splitmix64's finaliser; the highest weight wins, ties
  to the lowest index). `rooms_owned_by(owner_id, ids, prefix, n)` picks room names.
- `Cluster(start_server, tmp_root, ids, ...)`: a node per id, each with its own HTTP port, nng
  port, data directory and TOML file holding the `[cluster]` table. Nodes named in `proxied`
  get a `FaultProxy` in front of their nng listener: the shared node list names the proxy's
  port and the node itself listens (`listen`) on another, so every byte its peers send it
  crosses the proxy. `start()` launches every node, `wait_all_up()` polls /metrics until each
  node reports `roomcast_cluster_peer_up 1` for every peer, `kill(id)` is `kill -9`,
  `restart(id)` starts the same id again on the same data directory, and `stop_all()` sends
  SIGTERM to every node at once (the `start_server` fixture then fails the test unless each
  exited 0). Every wait is bounded and fails with what it saw.
- `ClusterPublisher`: sends with client ids in a window and, like a careful client, sends an
  id again after `unavailable` (after `retry_after_ms`, at most 300 ms) until it is acked.
- `Member`: a joined connection that records every `msg` and `presence_diff` of its room.
"""

from __future__ import annotations

import collections
import json
import pathlib
import signal as signals
import threading
import time

from websockets.exceptions import ConnectionClosed

from faultproxy import FaultProxy
from helpers import HOST, Metrics, free_port, full_history, kill_server, mint_token

SECRET = "cluster-secret-of-the-e2e-tests"
ADMIN = {"Authorization": f"Bearer {mint_token('root', role='admin')}"}
PEER_METRICS = (
    "roomcast_cluster_peer_up",
    "roomcast_cluster_frames_sent_total",
    "roomcast_cluster_frames_received_total",
    "roomcast_cluster_records_sent_total",
    "roomcast_cluster_records_received_total",
    "roomcast_cluster_queue_bytes",
    "roomcast_cluster_resyncs_total",
)
NODE_METRICS = ("roomcast_cluster_hellos_refused_total", "roomcast_cluster_bad_frames_total")

_M64 = (1 << 64) - 1


# --------------------------------------------------------------------------- ownership


def weight(node_id: str, room: str) -> int:
    h = 0xCBF29CE484222325
    for b in node_id.encode() + b"\xff" + room.encode():
        h ^= b
        h = (h * 0x100000001B3) & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def owner(room: str, ids) -> str:
    best_w, best = -1, None
    for node_id in ids:
        w = weight(node_id, room)
        if w > best_w:  # strictly greater: a tie stays with the lower index
            best_w, best = w, node_id
    return best


def rooms_owned_by(owner_id: str, ids, prefix: str, n: int = 1) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        name = f"{prefix}-{owner_id}{i}"
        if owner(name, ids) == owner_id:
            out.append(name)
        i += 1
        assert i < 10000, f"no room for {owner_id} among {ids}"
    return out


# --------------------------------------------------------------------------- waiting


def wait_for(pred, timeout: float, what, interval: float = 0.02):
    """Polls `pred` until it is truthy (its value is returned); fails after `timeout` s with
    `what` (a string, or a callable giving one, evaluated then)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            msg = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {msg}")
        time.sleep(interval)


# --------------------------------------------------------------------------- nodes


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for these values


def render_config(node_id: str, nodes: list[tuple[str, str]], secret: str, down_after: str,
                  listen: str | None = None) -> str:
    lines = [
        "[cluster]",
        f"node-id = {toml_str(node_id)}",
        f"secret = {toml_str(secret)}",
        f"down-after = {toml_str(down_after)}",
        "nodes = [",
    ]
    lines += [f"  {{ id = {toml_str(i)}, addr = {toml_str(a)} }}," for i, a in nodes]
    lines.append("]")
    if listen:
        lines.append(f"listen = {toml_str(listen)}")
    return "\n".join(lines) + "\n"


class Node:
    def __init__(self, cluster: "Cluster", node_id: str, root: pathlib.Path, proxied: bool):
        self.cluster = cluster
        self.id = node_id
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "node.toml"
        self.http_port = free_port()
        self.real_nng_port = free_port()
        self.proxy: FaultProxy | None = None
        if proxied:
            self.proxy = FaultProxy(self.real_nng_port).start()
            self.nng_port = self.proxy.port
        else:
            self.nng_port = self.real_nng_port
        self.bus_addr = f"tcp://{HOST}:{free_port()}" if cluster.bus else None
        self.srv = None  # the current helpers.Server
        self.starts = 0
        # Per node overrides of what the cluster would write (to test refusals).
        self.secret: str | None = None
        self.nodes_override: list[tuple[str, str]] | None = None

    @property
    def addr(self) -> str:
        """The address every node's list names for this node (the proxy's, when there is one)."""
        return f"tcp://{HOST}:{self.nng_port}"

    def write_config(self):
        listen = f"tcp://{HOST}:{self.real_nng_port}" if self.proxy else None
        text = render_config(self.id, self.nodes_override or self.cluster.node_list(),
                             self.secret or self.cluster.secret, self.cluster.down_after, listen)
        self.config_path.write_text(text)

    def start(self):
        assert self.srv is None or self.srv.proc.poll() is not None, f"node {self.id} is running"
        self.write_config()
        flags = ["--config", str(self.config_path), *self.cluster.flags]
        if self.bus_addr:
            flags += ["--bus-publish", self.bus_addr]
        self.starts += 1
        self.srv = self.cluster.start_server(*flags, port=self.http_port, data_dir=self.data_dir)
        return self.srv

    @property
    def alive(self) -> bool:
        return self.srv is not None and self.srv.proc.poll() is None

    # -- convenience, on the current process

    def ws(self, user="ann", **kw):
        return self.srv.ws(user, **kw)

    def request(self, *a, **kw):
        return self.srv.request(*a, **kw)

    def metrics(self) -> Metrics:
        return self.srv.metrics()

    def peer_up(self) -> dict:
        """peer id -> the value of roomcast_cluster_peer_up (absent peers are missing)."""
        m = self.metrics()
        return {lab.get("peer"): v for lab, v in m.get("roomcast_cluster_peer_up")}

    def cluster_view(self):
        r = self.request("GET", "/v1/cluster", headers=ADMIN)
        assert r.status == 200, r
        return r.json()

    def tail(self, n: int = 15) -> str:
        if self.srv is None:
            return "(never started)"
        return "\n".join(self.srv.output().splitlines()[-n:])


class Cluster:
    def __init__(self, start_server, tmp_root, ids=("a", "b", "c"), *, down_after: str = "1s",
                 proxied=(), flags=("--send-rate", "0"), secret: str = SECRET, bus: bool = False):
        self.start_server = start_server
        self.ids = list(ids)
        self.down_after = down_after
        self.flags = list(flags)
        self.secret = secret
        self.bus = bus
        root = pathlib.Path(tmp_root)
        self.nodes = {i: Node(self, i, root / f"node-{i}", i in proxied) for i in self.ids}

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def node_list(self) -> list[tuple[str, str]]:
        return [(i, self.nodes[i].addr) for i in self.ids]

    def owner(self, room: str) -> Node:
        return self.nodes[owner(room, self.ids)]

    def rooms(self, owner_id: str, prefix: str, n: int = 1) -> list[str]:
        return rooms_owned_by(owner_id, self.ids, prefix, n)

    def start(self, wait_up: bool = True, timeout: float = 20.0):
        for n in self.nodes.values():
            n.start()
        if wait_up:
            self.wait_all_up(timeout)
        return self

    def _peer_states(self, among=None) -> dict:
        among = among or self.ids
        out = {}
        for i in among:
            n = self.nodes[i]
            if not n.alive:
                out[i] = "not running"
                continue
            try:
                out[i] = n.peer_up()
            except Exception as e:  # starting, or gone: reported if it lasts
                out[i] = f"metrics: {e!r}"
        return out

    def wait_all_up(self, timeout: float = 20.0, among=None):
        """Until every node in `among` (all by default) reports every other one up."""
        among = list(among or self.ids)
        last = {}

        def ok():
            nonlocal last
            last = self._peer_states(among)
            return all(isinstance(last[i], dict) and all(last[i].get(p) == 1 for p in among if p != i)
                       for i in among)

        wait_for(ok, timeout, lambda: f"all peers up among {among}; peer_up seen: {last}\n" + self._tails(among),
                 interval=0.1)

    def wait_peer(self, on: str, peer: str, up: bool, timeout: float = 15.0):
        """Until node `on` reports `peer` up (or down)."""
        want = 1 if up else 0
        last = {}

        def ok():
            nonlocal last
            last = self._peer_states([on])
            return isinstance(last[on], dict) and last[on].get(peer) == want

        wait_for(ok, timeout, lambda: f"{on} to see {peer} {'up' if up else 'down'}; peer_up seen: {last}\n"
                 + self._tails([on]), interval=0.05)

    def _tails(self, among) -> str:
        return "\n".join(f"--- node {i} output tail:\n{self.nodes[i].tail()}" for i in among)

    def kill(self, node_id: str):
        n = self.nodes[node_id]
        assert n.alive, f"node {node_id} is not running"
        kill_server(n.srv)

    def restart(self, node_id: str, wait_up: bool = True, timeout: float = 20.0):
        n = self.nodes[node_id]
        if n.alive:
            self.kill(node_id)
        n.start()
        if wait_up:
            self.wait_all_up(timeout)
        return n

    def stop_all(self, timeout: float = 15.0):
        """SIGTERM to every running node at once, then waits for each (exit codes are checked by
        the `start_server` fixture at teardown)."""
        live = [n for n in self.nodes.values() if n.alive]
        for n in live:
            n.srv.signal(signals.SIGTERM)
        for n in live:
            n.srv.stop(timeout)

    def close(self):
        try:
            self.stop_all()
        finally:
            for n in self.nodes.values():
                if n.proxy is not None:
                    n.proxy.close()


# --------------------------------------------------------------------------- clients


class ClusterPublisher(threading.Thread):
    """Sends to `room` on `node` with ids `<prefix>-<n>`, at most `window` unanswered, pausing
    `interval` s between new sends. An id refused with `unavailable` (or `overloaded`) is sent
    again after `retry_after_ms` (capped at 300 ms), with a new ref, until acked. `finish()` stops
    new ids and waits up to `settle` s for every id to be acked.

    Records `sent` (ids, first-send order), `acks` (id -> (seq, ts)), `unavailable` (count of
    such answers), `refused` (id -> other error codes) and `problems` (anything else wrong,
    such as one id acked with two different seqs)."""

    def __init__(self, node: Node, room: str, prefix: str, user: str = "pub", window: int = 4,
                 interval: float = 0.002, settle: float = 15.0, limit: int | None = None):
        super().__init__(daemon=True)
        self.node_id = node.id
        self.client = node.ws(user)
        self.room, self.prefix, self.window, self.interval, self.settle, self.limit = (
            room, prefix, window, interval, settle, limit)
        self.sent: list[str] = []
        self.acks: dict[str, tuple[int, int]] = {}
        self.unavailable = 0
        self.refused: dict[str, str] = {}
        self.problems: list = []
        self.dropped = False
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def finish(self, timeout: float | None = None):
        self._halt.set()
        self.join(timeout or self.settle + 10)
        assert not self.is_alive(), f"publisher {self.prefix} did not stop"
        self.client.close()

    def n_acked(self) -> int:
        return len(self.acks)

    def last_seq(self) -> int:
        return max((s for s, _ in list(self.acks.values())), default=0)

    def unacked(self) -> list[str]:
        return [m for m in self.sent if m not in self.acks and m not in self.refused]

    def run(self):
        conn = self.client.conn
        outstanding: dict[int, str] = {}  # ref -> id
        retry: collections.deque = collections.deque()  # (when, id)
        n = ref = 0
        next_new = 0.0
        settle_deadline = None
        try:
            while True:
                now = time.monotonic()
                stopping = self._halt.is_set() or (self.limit is not None and n >= self.limit)
                while retry and retry[0][0] <= now and len(outstanding) < self.window:
                    _, mid = retry.popleft()
                    ref += 1
                    outstanding[ref] = mid
                    conn.send(json.dumps({"op": "send", "room": self.room, "id": mid, "ref": ref,
                                          "body": {"p": self.prefix, "id": mid}}))
                while (not stopping and not retry and len(outstanding) < self.window
                       and now >= next_new):
                    mid = f"{self.prefix}-{n}"
                    n += 1
                    ref += 1
                    outstanding[ref] = mid
                    self.sent.append(mid)
                    conn.send(json.dumps({"op": "send", "room": self.room, "id": mid, "ref": ref,
                                          "body": {"p": self.prefix, "id": mid}}))
                    next_new = now + self.interval
                    stopping = self.limit is not None and n >= self.limit
                if stopping and not outstanding and not retry:
                    return
                if stopping:
                    if settle_deadline is None:
                        settle_deadline = now + self.settle
                    elif now > settle_deadline:
                        self.problems.append(f"never acked: {self.unacked()[:5]}")
                        return
                wait = 0.05
                if not stopping and not retry and len(outstanding) < self.window:
                    wait = min(wait, next_new - now)
                if retry and len(outstanding) < self.window:
                    wait = min(wait, retry[0][0] - now)
                try:
                    m = json.loads(conn.recv(timeout=max(0.0005, wait)))
                except TimeoutError:
                    continue
                if m.get("op") == "msg":
                    continue
                mid = outstanding.pop(m.get("ref"), None)
                if mid is None:
                    self.problems.append(f"unexpected {m}")
                elif m.get("op") == "ack":
                    got = (m.get("seq"), m.get("ts"))
                    if m.get("id") != mid or m.get("room") != self.room:
                        self.problems.append(f"ack for {mid} is {m}")
                    old = self.acks.get(mid)
                    if old is not None and old[0] != got[0]:
                        self.problems.append(f"{mid} acked as seq {old[0]} and as seq {got[0]}")
                    self.acks.setdefault(mid, got)
                elif m.get("op") == "error" and m.get("code") in ("unavailable", "overloaded"):
                    self.unavailable += 1
                    after = m.get("retry_after_ms")
                    if m.get("code") == "unavailable" and not isinstance(after, int):
                        self.problems.append(f"unavailable without an integer retry_after_ms: {m}")
                        after = 100
                    retry.append((time.monotonic() + min(max(after or 0, 10), 300) / 1000, mid))
                elif m.get("op") == "error":
                    self.refused[mid] = m.get("code")
                else:
                    self.problems.append(f"reply to {mid} is {m}")
        except (ConnectionClosed, OSError):
            self.dropped = True
        except Exception as e:  # reported by the test
            self.problems.append(repr(e))


class Member(threading.Thread):
    """A member of `room` on `node` (joined before the constructor returns, with `since` when
    given) recording every `msg` and `presence_diff` of that room until `finish()`."""

    def __init__(self, node: Node, room: str, user: str, since: int | None = None):
        super().__init__(daemon=True)
        self.node_id = node.id
        self.user = user
        self.room = room
        self.client = node.ws(user)
        fields = {} if since is None else {"since": since}
        self.since = since
        self.joined = self.client.join(room, **fields)
        self.msgs: list = []
        self.diffs: list = []
        self.others: list = []
        for m in list(self.client.pending):
            self._take(m)
        self.client.pending.clear()
        self.problems: list = []
        self.dropped = False
        self._halt = threading.Event()
        self.start()

    def _take(self, m):
        if m.get("room") != self.room:
            self.others.append(m)
        elif m.get("op") == "msg":
            self.msgs.append(m)
        elif m.get("op") == "presence_diff":
            self.diffs.append(m)
        else:
            self.others.append(m)

    def last_seq(self) -> int:
        return self.msgs[-1]["seq"] if self.msgs else (self.since or 0)

    def seen_leave(self, user: str) -> bool:
        return any(user in d.get("leaves", []) for d in list(self.diffs))

    def seen_join(self, user: str) -> bool:
        return any(user in d.get("joins", []) for d in list(self.diffs))

    def finish(self, timeout: float = 10.0):
        self._halt.set()
        self.join(timeout)
        self.client.close()

    def run(self):
        try:
            while not self._halt.is_set():
                try:
                    m = json.loads(self.client.conn.recv(timeout=0.2))
                except TimeoutError:
                    continue
                self._take(m)
        except (ConnectionClosed, OSError):
            self.dropped = True
        except Exception as e:
            self.problems.append(repr(e))


def owner_history(cluster: Cluster, room: str, via: Node | None = None) -> list:
    """Every stored message of `room`, read from its owner (or `via`)."""
    node = via or cluster.owner(room)
    c = node.ws("checker")
    try:
        return full_history(c, room, timeout=15)
    finally:
        c.close()


def check_room(cluster: Cluster, room: str, publishers=(), members=(), settle: float = 20.0,
               posted=None) -> list:
    """The cluster-wide guarantees for one room, once publishing has stopped: the owner's history
    is 1..N without holes; each id is stored once; every acked id is stored at its acked seq
    and ts; nothing is stored that nobody sent; every member (its replay, then what it got
    live) saw exactly the history after its `since`, in order. Returns the history."""
    hist = owner_history(cluster, room)
    seqs = [m["seq"] for m in hist]
    assert seqs == list(range(1, len(seqs) + 1)), f"{room}: stored seqs are not 1..N: {_runs(seqs)}"
    ids = [m.get("id") for m in hist]
    counts = collections.Counter(ids)
    dups = [i for i, k in counts.items() if k > 1]
    assert not dups, f"{room}: ids stored more than once: {dups[:5]}"
    by_seq = {m["seq"]: m for m in hist}
    sent = set()
    for p in publishers:
        if p.room != room:
            continue
        sent.update(p.sent)
        assert not p.problems, f"publisher {p.prefix} on {p.node_id}: {p.problems[:5]}"
        assert not p.refused, f"publisher {p.prefix} on {p.node_id} was refused: {list(p.refused.items())[:5]}"
        wrong = [(mid, seq, by_seq.get(seq)) for mid, (seq, ts) in p.acks.items()
                 if by_seq.get(seq) is None or by_seq[seq].get("id") != mid or by_seq[seq]["ts"] != ts]
        assert not wrong, f"{room}: acked messages not stored as acked (id, seq, stored): {wrong[:3]}"
    for mid, seq in (posted or {}).items():
        sent.add(mid)
        assert by_seq.get(seq, {}).get("id") == mid, f"{room}: POST {mid} answered seq {seq}, stored {by_seq.get(seq)}"
    phantom = [i for i in ids if i not in sent]
    if publishers or posted:
        assert not phantom, f"{room}: stored ids nobody sent: {phantom[:5]}"
    top = seqs[-1] if seqs else 0
    for mb in members:
        if mb.room != room:
            continue
        wait_for(lambda: mb.last_seq() >= top or mb.dropped, settle,
                 lambda: f"member {mb.user} on {mb.node_id} of {room} to reach seq {top} (at {mb.last_seq()})")
        assert not mb.dropped, f"member {mb.user} on {mb.node_id} was disconnected"
        start = mb.since if mb.since is not None else mb.joined["seq"]
        got = [m["seq"] for m in mb.msgs]
        assert got == list(range(start + 1, top + 1)), (
            f"member {mb.user} on {mb.node_id} of {room} (from seq {start}) saw {_runs(got)}, "
            f"expected {start + 1}..{top}")
        bad = [m["seq"] for m in mb.msgs if m.get("id") != by_seq[m["seq"]].get("id")
               or m.get("body") != by_seq[m["seq"]].get("body")]
        assert not bad, f"member {mb.user} on {mb.node_id} got other messages than stored at seqs {bad[:5]}"
    return hist


def _runs(seqs) -> str:
    """`1-40, 42-60, 59-70` (what a list of seqs looks like, compactly)."""
    if not seqs:
        return "[]"
    out, start, prev = [], seqs[0], seqs[0]
    for s in seqs[1:]:
        if s != prev + 1:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = s
        prev = s
    out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(out[:20]) + (" ..." if len(out) > 20 else "") + f" ({len(seqs)} msgs)"

