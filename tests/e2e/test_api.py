"""The server API (/v1/api/): API keys (hashed in the config) or an admin
token; publish, history, presence, info, disconnect; tried with curl and
with Python's urllib, beside real WebSocket members."""

import hashlib
import json
import subprocess
import urllib.error
import urllib.request

import pytest

from helpers import mint_token

KEY = "k-0123456789abcdef"
OTHER = "k-fedcba9876543210"


def entry(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def curl(srv, method, body, auth=f"apikey {KEY}"):
    """(status, parsed JSON) from curl."""
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
           f"{srv.http_base}/v1/api/{method}", "-H", "Content-Type: application/json", "--data-binary", body]
    if auth:
        cmd += ["-H", f"Authorization: {auth}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    text, _, status = out.rpartition("\n")
    return int(status), (json.loads(text) if text.strip() else None)


def call(srv, method, obj, auth=f"apikey {KEY}"):
    """(status, parsed JSON) from urllib."""
    req = urllib.request.Request(f"{srv.http_base}/v1/api/{method}", data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def api_server(start_server, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(f'api-keys = "{entry(KEY)}"\n')
    srv = start_server("--config", str(cfg))
    srv.cfg = cfg
    return srv


def test_publish_reaches_members_with_curl_and_python(api_server):
    srv = api_server
    m = srv.ws("ann")
    try:
        m.join("api-room")
        status, body = curl(srv, "publish", '{"room":"api-room","body":{"text":"from the backend"}}')
        assert status == 201 and body["room"] == "api-room" and body["seq"] == 1, (status, body)
        got = m.wait(op="msg", room="api-room")
        assert got["body"] == {"text": "from the backend"} and got["from"] == "api", got
        status, body = call(srv, "publish", {"room": "api-room", "body": [1, 2], "from": "billing", "id": "inv-7"})
        assert status == 201 and body["seq"] == 2, body
        assert m.wait(op="msg", room="api-room")["from"] == "billing"
        # The same id again: the original seq, no second message.
        status, again = call(srv, "publish", {"room": "api-room", "body": [1, 2], "from": "billing", "id": "inv-7"})
        assert status == 201 and again["seq"] == 2, again
        status, h = call(srv, "history", {"room": "api-room"})
        assert status == 200 and [x["seq"] for x in h["messages"]] == [1, 2], h
        status, p = curl(srv, "presence", '{"room":"api-room"}')
        assert status == 200 and "ann" in json.dumps(p["members"]), p
        status, info = call(srv, "info", {})
        assert status == 200 and len(info["reactors"]) == 2, info
        assert sum(r["connections"] for r in info["reactors"]) >= 1
        assert sum(r["published"] for r in info["reactors"]) == 2, info
    finally:
        m.close()


def test_disconnect_closes_every_connection_of_the_user_only(api_server):
    srv = api_server
    a1, a2, b = srv.ws("ann"), srv.ws("ann"), srv.ws("bob")
    try:
        status, body = call(srv, "disconnect", {"user": "ann", "code": 4100, "reason": "account closed"})
        assert status == 200 and body["reactors"] == 2, body
        for c in (a1, a2):
            code, reason, _ = c.closed(timeout=5)
            assert (code, reason) == (4100, "account closed")
        assert b.call("join", room="still-open").get("op") == "joined"
        status, body = call(srv, "disconnect", {"user": "bob"})
        assert status == 200
        code, reason, _ = b.closed(timeout=5)
        assert code == 4002, code
        assert call(srv, "disconnect", {"user": "bob", "code": 1006})[0] == 400
        assert call(srv, "disconnect", {"user": "bob", "reason": "x" * 124})[0] == 400
    finally:
        for c in (a1, a2, b):
            c.close()


def test_who_may_call(api_server):
    srv = api_server
    body = {"room": "auth-room", "body": 1}
    assert call(srv, "publish", body, auth=None)[0] == 401
    assert call(srv, "publish", body, auth=f"apikey {OTHER}")[0] == 401
    assert call(srv, "publish", body, auth=f"APIKEY {KEY}")[0] == 201  # the scheme is case-insensitive
    assert call(srv, "publish", body, auth=f"Bearer {mint_token('ann')}")[0] == 403
    assert call(srv, "publish", body, auth=f"Bearer {mint_token('root', role='admin')}")[0] == 201
    # The key is never logged.
    assert KEY not in srv.output()


def test_bad_requests(api_server):
    srv = api_server
    status, e = curl(srv, "publish", "{not json")
    assert status == 400 and e["error"]["code"] == "bad_request", e
    assert call(srv, "publish", {"room": "r", "body": 1, "extra": 2})[0] == 400
    assert call(srv, "publish", {"room": "bad room", "body": 1})[0] == 400
    assert call(srv, "publish", {"room": "r"})[0] == 400
    assert call(srv, "nosuch", {})[0] == 404
    r = srv.request("GET", "/v1/api/publish", headers={"Authorization": f"apikey {KEY}"})
    assert r.status == 405 and r.header("Allow") == "POST", r


def test_api_keys_change_on_reload(api_server):
    srv = api_server
    srv.cfg.write_text(f'api-keys = "{entry(OTHER)}"\n')
    # A reload needs an admin: an API key is not enough.
    assert call(srv, "reload", {}, auth=f"apikey {KEY}")[0] == 403
    status, body = call(srv, "reload", {}, auth=f"Bearer {mint_token('root', role='admin')}")
    assert status == 200 and body["changed"] == ["api-keys"], body
    assert call(srv, "info", {}, auth=f"apikey {KEY}")[0] == 401
    assert call(srv, "info", {}, auth=f"apikey {OTHER}")[0] == 200


def test_a_key_in_place_of_a_hash_is_refused_at_start(roomcast_bin, tmp_path):
    r = subprocess.run([roomcast_bin, "serve", "--data", str(tmp_path), "--api-keys", KEY],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "api-keys" in r.stderr, (r.stdout, r.stderr)


def test_broadcast_publishes_to_every_room_once(api_server):
    srv = api_server
    a, b = srv.ws("ann"), srv.ws("bob")
    try:
        a.join("bc-1")
        b.join("bc-2")
        status, body = curl(srv, "broadcast", '{"rooms":["bc-1","bc-2","bc-3","bc-1"],"body":{"n":1}}')
        assert status == 202 and body["rooms"] == 3, (status, body)
        assert a.wait(op="msg", room="bc-1")["body"] == {"n": 1}
        assert b.wait(op="msg", room="bc-2")["from"] == "api"
        for room in ("bc-1", "bc-2", "bc-3"):
            status, h = call(srv, "history", {"room": room})
            assert [m["body"] for m in h["messages"]] == [{"n": 1}], (room, h)
        # All or nothing: one bad name refuses the call before any room gets it.
        status, e = call(srv, "broadcast", {"rooms": ["bc-1", "bad room"], "body": 2})
        assert status == 400, e
        assert len(call(srv, "history", {"room": "bc-1"})[1]["messages"]) == 1
        assert call(srv, "broadcast", {"rooms": [], "body": 1})[0] == 400
        assert call(srv, "broadcast", {"rooms": [f"r{i}" for i in range(1001)], "body": 1})[0] == 400
    finally:
        a.close()
        b.close()


def test_unsubscribe_takes_a_user_out_of_a_room(api_server):
    srv = api_server
    a, b = srv.ws("ann"), srv.ws("bob")
    try:
        a.join("un-room")
        b.join("un-room")
        status, body = call(srv, "unsubscribe", {"user": "ann", "room": "un-room"})
        assert status == 200 and body["reactors"] == 2, body
        left = a.wait(op="left", room="un-room")
        assert left.get("reason") == "unsubscribed", left
        assert call(srv, "publish", {"room": "un-room", "body": "after"})[0] == 201
        assert b.wait(op="msg", room="un-room")["body"] == "after"
        assert [m for m in a.drain(0.5) if m.get("op") == "msg"] == []
        status, p = call(srv, "presence", {"room": "un-room"})
        assert "ann" not in json.dumps(p["members"]) and "bob" in json.dumps(p["members"]), p
    finally:
        a.close()
        b.close()


def test_rooms_lists_member_counts_in_pages(api_server):
    srv = api_server
    a, b, c = srv.ws("ann"), srv.ws("bob"), srv.ws("cat")
    try:
        a.join("ls-a")
        a.join("ls-b")
        b.join("ls-b")
        c.join("other")
        status, body = call(srv, "rooms", {"prefix": "ls-"})
        assert status == 200, body
        got = {r["room"]: (r["connections"], r["users"]) for r in body["rooms"]}
        assert got == {"ls-a": (1, 1), "ls-b": (2, 2)} and body["next"] is None, body
        status, page = curl(srv, "rooms", '{"prefix":"ls-","limit":1}')
        assert [r["room"] for r in page["rooms"]] == ["ls-a"] and page["next"] == "ls-a", page
        status, page = call(srv, "rooms", {"prefix": "ls-", "limit": 1, "after": page["next"]})
        assert [r["room"] for r in page["rooms"]] == ["ls-b"] and page["next"] is None, page
        status, everything = call(srv, "rooms", {})
        assert {"ls-a", "ls-b", "other"} <= {r["room"] for r in everything["rooms"]}, everything
    finally:
        for x in (a, b, c):
            x.close()
