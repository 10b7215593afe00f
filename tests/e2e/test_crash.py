"""SIGKILL under concurrent publishing: whatever was acked or delivered survives, exactly once,
with contiguous seqs; whatever was in flight may or may not, but never leaves a hole."""

from __future__ import annotations

import random
import time

import pytest

from helpers import Publisher, Watcher, full_history, kill_server

ROUNDS = 30
FLAGS = ("--send-rate", "0", "--durability", "immediate")


def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _check(srv, rooms, verified, pubs, watchers, acked, rnd):
    """Checks every room's messages after `verified[room]` on the restarted server; returns the new
    last seq of each room."""
    c = srv.ws("checker")
    last = {}
    try:
        for room in rooms:
            j = c.join(room)
            hist = full_history(c, room, after=verified[room])
            got = [m["seq"] for m in hist]
            assert got == list(range(verified[room] + 1, verified[room] + 1 + len(got))), (
                f"round {rnd}, {room}: seqs after {verified[room]} are not contiguous: {got[:20]}")
            top = got[-1] if got else verified[room]
            assert j["seq"] == top, f"round {rnd}: joined.seq {j['seq']} but history ends at {top}"
            by_seq = {m["seq"]: m for m in hist}
            ids = [m.get("id") for m in hist]
            dups = {i for i in ids if ids.count(i) > 1}
            assert not dups, f"round {rnd}, {room}: ids stored twice: {sorted(dups)[:5]}"
            mine = [p for p in pubs if p.room == room]
            sent = {mid for p in mine for mid in p.sent}
            refused = {mid for p in mine for mid in p.refused}
            phantom = [i for i in ids if i not in sent]
            assert not phantom, f"round {rnd}, {room}: stored ids nobody sent: {phantom[:5]}"
            assert not (set(ids) & refused), f"round {rnd}: refused sends were stored: {sorted(set(ids) & refused)[:5]}"
            for p in mine:
                lost = []
                for mid, (seq, ts) in p.acks.items():
                    m = by_seq.get(seq)
                    if m is None or m.get("id") != mid or m["ts"] != ts:
                        lost.append((mid, seq, m))
                assert not lost, (f"round {rnd}, {room}: {len(lost)} acked messages lost or changed after "
                                  f"SIGKILL, e.g. {lost[:3]} (acks {len(p.acks)}, last seq {top})")
                order = [m["seq"] for m in hist if m.get("id", "").startswith(p.prefix + "-")]
                sent_pos = {mid: k for k, mid in enumerate(p.sent)}
                pos = [sent_pos[by_seq[s]["id"]] for s in order]
                assert pos == sorted(pos), f"round {rnd}: {p.prefix}'s messages stored out of send order"
                acked.update(p.acks)
            for w in watchers:
                if w.room != room:
                    continue
                seen = [(m["seq"], m.get("id")) for m in w.msgs if m["seq"] > verified[room]]
                gone = [(s, i) for s, i in seen if s not in by_seq or by_seq[s].get("id") != i]
                assert not gone, f"round {rnd}: a member saw messages that the crash took back: {gone[:3]}"
            last[room] = top
    finally:
        c.close()
    return last


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sigkill_under_concurrent_publishing(start_server, room):
    rng = random.Random(4)
    rooms = [room, room + "-b"]
    t0 = time.monotonic()
    srv = start_server(*FLAGS)
    data = srv.data_dir
    verified = {r: 0 for r in rooms}
    acked: dict = {}
    stats = []
    for rnd in range(ROUNDS):
        pubs = [
            Publisher(srv, rooms[0], f"r{rnd}a", user="pa", window=rng.choice([1, 8, 32])),
            Publisher(srv, rooms[0], f"r{rnd}b", user="pb", window=rng.choice([4, 16, 64])),
            Publisher(srv, rooms[0], f"r{rnd}c", user="pc", window=2),
            Publisher(srv, rooms[1], f"r{rnd}d", user="pd", window=rng.choice([1, 16])),
        ]
        watchers = [Watcher(srv, rooms[0], since=verified[rooms[0]]), Watcher(srv, rooms[1])]
        for t in [*watchers, *pubs]:
            t.start()
        _wait_for(lambda: all(len(p.acks) >= 3 for p in pubs), 10, f"acks in round {rnd}")
        time.sleep(rng.uniform(0.0, 1.0))
        code = kill_server(srv)
        assert code == -9, f"server exited {code} instead of being killed"
        for t in [*pubs, *watchers]:
            t.finish(10)
            assert not t.is_alive()
        for p in pubs:
            assert not p.problems, f"round {rnd} {p.prefix}: {p.problems[:3]}"
        srv = start_server(*FLAGS, data_dir=data)
        before = dict(verified)
        verified.update(_check(srv, rooms, verified, pubs, watchers, acked, rnd))
        stats.append((sum(len(p.acks) for p in pubs), sum(verified[r] - before[r] for r in rooms)))
        for t in [*pubs, *watchers]:
            t.client.close()
    # One last look over everything: every ack of every round, once, at its seq.
    c = srv.ws("final")
    stored = {}
    for r in rooms:
        hist = full_history(c, r)
        assert [m["seq"] for m in hist] == list(range(1, verified[r] + 1)), f"{r}: seqs not 1..{verified[r]}"
        for m in hist:
            assert m["id"] not in stored, f"{m['id']} stored twice"
            stored[m["id"]] = (m["seq"], m["ts"])
    bad = [(mid, st, stored.get(mid)) for mid, st in acked.items() if stored.get(mid) != st]
    assert not bad, f"{len(bad)} acked messages missing or changed at the end: {bad[:5]}"
    c.close()
    elapsed = time.monotonic() - t0
    print(f"\n{ROUNDS} crash rounds in {elapsed:.1f} s; (acked, stored) per round: {stats}")
    assert elapsed < 150, f"crash rounds took {elapsed:.0f} s"
