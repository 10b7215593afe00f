"""Backups: `POST /v1/admin/backup` while publishers run, and `roomcast backup` offline; a restored
copy serves the same history (a contiguous prefix) and the same dedup answers."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time

from helpers import SECRET, Publisher, assert_json_error, full_history, mint_token, stop_server

ADMIN = {"Authorization": f"Bearer {mint_token('root', role='admin')}"}


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    env["ROOMCAST_JWT_SECRET"] = SECRET
    return env


def _restore(start_server, backup, where):
    where.mkdir()
    shutil.copyfile(backup, where / "roomcast.redb")
    return start_server("--send-rate", "0", data_dir=where)


def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_backup_while_serving(start_server, room, tmp_path):
    srv = start_server("--send-rate", "0")
    rooms = [room, room + "-b"]
    pubs = [Publisher(srv, rooms[k % 2], f"p{k}", user=f"u{k}", window=8) for k in range(3)]
    for p in pubs:
        p.start()
    try:
        _wait_for(lambda: all(len(p.acks) >= 50 for p in pubs), 15, "publishers to get going")
        out = pathlib.Path(srv.data_dir) / "backups" / "copy.redb"
        before = sum(len(p.acks) for p in pubs)
        r = srv.request("POST", "/v1/admin/backup", body={"name": out.name}, headers=ADMIN, timeout=30)
        assert r.status == 200, r
        doc = r.json()
        assert doc["path"] == str(out) and isinstance(doc["messages"], int), doc
        assert doc["messages"] >= before, f"the copy holds {doc['messages']} but {before} were acked before it"
        # The server kept serving during and after the backup.
        after = sum(len(p.acks) for p in pubs)
        _wait_for(lambda: sum(len(p.acks) for p in pubs) > after + 50, 10, "publishing after the backup")
    finally:
        for p in pubs:
            p.finish(15)
    for p in pubs:
        assert not p.problems and not p.refused, (p.problems[:3], list(p.refused.items())[:3])
    assert out.exists() and out.stat().st_size > 0

    c = srv.ws("reader")
    live = {r: full_history(c, r) for r in rooms}
    c.close()
    srv2 = _restore(start_server, out, tmp_path / "restored")
    c2 = srv2.ws("reader")
    total = 0
    for r in rooms:
        h = full_history(c2, r)
        k = len(h)
        assert [m["seq"] for m in h] == list(range(1, k + 1)), f"{r}: restored seqs are not 1..{k}"
        assert h == live[r][:k], f"{r}: the restored history differs from the served one"
        assert k > 0
        total += k
    assert total == doc["messages"], f"backup said {doc['messages']} messages, restored copy holds {total}"
    # The copy carries the dedup table and the room seqs.
    first = live[rooms[0]][0]
    again = srv2.ws(first["from"]).call("send", room=rooms[0], body="retry", id=first["id"])
    assert (again["op"], again["seq"], again["ts"]) == ("ack", first["seq"], first["ts"]), (again, first)
    k0 = len(full_history(c2, rooms[0]))
    nxt = c2.call("send", room=rooms[0], body="next")
    assert nxt["seq"] == k0 + 1, nxt
    c2.close()


def test_backup_auth_and_default_path(start_server, room):
    srv = start_server("--send-rate", "0")
    c = srv.ws("ann")
    for i in range(5):
        assert c.call("send", room=room, body=i)["op"] == "ack"
    c.close()
    assert_json_error(srv.request("POST", "/v1/admin/backup", body=b""), 401, "unauthorized")
    user = {"Authorization": f"Bearer {mint_token('ann')}"}
    assert_json_error(srv.request("POST", "/v1/admin/backup", body=b"", headers=user), 403, "forbidden")
    other = {"Authorization": f"Bearer {mint_token('ann', role='user')}"}
    assert_json_error(srv.request("POST", "/v1/admin/backup", body={}, headers=other), 403, "forbidden")
    bad = {"Authorization": f"Bearer {mint_token('root', secret='wrong', role='admin')}"}
    assert_json_error(srv.request("POST", "/v1/admin/backup", body=b"", headers=bad), 401, "unauthorized")
    assert not os.path.exists(os.path.join(srv.data_dir, "backups")) or not os.listdir(
        os.path.join(srv.data_dir, "backups")), "a refused backup wrote something"

    r = srv.request("POST", "/v1/admin/backup", body=b"", headers=ADMIN, timeout=30)
    assert r.status == 200, r
    doc = r.json()
    assert doc["messages"] == 5, doc
    path = doc["path"]
    assert os.path.dirname(path) == os.path.join(str(srv.data_dir), "backups"), path
    base = os.path.basename(path)
    assert base.startswith("roomcast-") and base.endswith(".redb") and base[9:-5].isdigit(), path
    assert os.path.getsize(path) > 0


def test_offline_backup(start_server, roomcast_bin, room, tmp_path):
    srv = start_server("--send-rate", "0")
    c = srv.ws("ann")
    for i in range(30):
        assert c.call("send", room=room, body=i, id=f"m{i}")["op"] == "ack"
    hist = full_history(c, room)
    c.close()
    out = tmp_path / "offline.redb"
    cmd = [roomcast_bin, "backup", "--data", str(srv.data_dir), "--out", str(out)]

    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=15, env=_env())
    assert r.returncode != 0, f"offline backup of a directory in use succeeded: {r}"
    assert time.monotonic() - t0 < 10
    assert "in use" in r.stderr, f"unclear message: {r.stderr!r}"

    assert stop_server(srv) == 0
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0, r
    assert str(out) in r.stdout and "30 messages" in r.stdout, r.stdout
    srv2 = _restore(start_server, out, tmp_path / "restored")
    c2 = srv2.ws("ann")
    assert full_history(c2, room) == hist
    again = c2.call("send", room=room, body="retry", id="m3")
    assert (again["seq"], again["ts"]) == (hist[3]["seq"], hist[3]["ts"]), again
    assert c2.call("send", room=room, body="new")["seq"] == 31
    c2.close()

    # A directory without a database: a clear failure, and no empty database left behind.
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([roomcast_bin, "backup", "--data", str(empty), "--out", str(tmp_path / "x.redb")],
                       capture_output=True, text=True, timeout=15, env=_env())
    assert r.returncode != 0 and r.stderr.strip(), r
    assert not (empty / "roomcast.redb").exists()
