"""Room rules in tokens (`rooms`, `send`, `role`, `--default-rooms`) and `refresh` in place.

Tokens are minted here with the server's secret (helpers.mint_token, HS256); the rules are
checked over WebSocket (`forbidden` errors, the connection stays open) and over HTTP (403).
`refresh` is driven against the real clock with short-lived tokens: the leeway is read from
`--jwt-leeway` when the binary has that flag (it is then set to 1 s), else it is the
built-in 2 s.
"""

import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from helpers import mint_token


def leeway_of(binary) -> tuple[int, list]:
    """The leeway the server will use, and the flags that set it."""
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--jwt-leeway" in out:
        return 1, ["--jwt-leeway", "1s"]
    return 2, []


@pytest.fixture(scope="module")
def leeway(roomcast_bin):
    return leeway_of(roomcast_bin)


@pytest.fixture(scope="module")
def srv(module_servers, leeway):
    return module_servers("--send-rate", "0", *leeway[1])


def http(srv, method, path, token=None, body=None):
    """(status, JSON body) of one request through urllib."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(srv.http_base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def forbidden(reply, ref=None):
    ok = reply.get("op") == "error" and reply.get("code") == "forbidden"
    return ok and (ref is None or reply.get("ref") == ref)


def test_join_allowed_and_forbidden(srv, room):
    c = srv.ws(None, token=mint_token("ann", rooms=[room, f"{room}-*"]))
    c.join(room)
    c.join(f"{room}-x")
    r = c.call("join", room=f"{room}x", ref="j1")
    assert forbidden(r, "j1"), r
    r = c.call("join", room="elsewhere", ref=7)
    assert forbidden(r, 7), r
    # The connection is still open and still works.
    assert c.call("ping")["op"] == "pong"
    assert c.call("send", room=room, body="hi")["op"] == "ack"
    c.close()


def test_send_forbidden_while_join_allowed(srv, room):
    reader = srv.ws(None, token=mint_token("ro", rooms=[room], send=[]))
    writer = srv.ws(None, token=mint_token("rw", rooms=[room]))
    reader.join(room)
    writer.join(room)
    r = reader.call("send", room=room, body="nope", ref="s1")
    assert forbidden(r, "s1"), r
    assert writer.call("send", room=room, body="yes")["op"] == "ack"
    # The reader still receives what others send.
    m = reader.wait(op="msg", room=room)
    assert m["body"] == "yes" and m["from"] == "rw"
    # `send` may name rooms outside `rooms`: sending there without joining.
    other = f"{room}-inbox"
    poster = srv.ws(None, token=mint_token("poster", rooms=[room], send=[other]))
    assert poster.call("send", room=other, body=1)["op"] == "ack"
    assert forbidden(poster.call("join", room=other))
    assert forbidden(poster.call("send", room=room, body=1))
    for c in (reader, writer, poster):
        c.close()


def test_history_and_presence_forbidden(srv, room):
    c = srv.ws(None, token=mint_token("ann", rooms=[f"{room}-a"]))
    assert forbidden(c.call("history", room=f"{room}-b", ref="h"), "h")
    assert forbidden(c.call("presence", room=f"{room}-b", ref="p"), "p")
    assert c.call("history", room=f"{room}-a")["op"] == "history"
    assert c.call("presence", room=f"{room}-a")["op"] == "presence"
    c.close()


def test_http_room_endpoints_403(srv, room):
    t = mint_token("ann", rooms=[room], send=[])
    status, body = http(srv, "GET", f"/v1/rooms/{room}/messages", t)
    assert status == 200, body
    for path in (f"/v1/rooms/{room}-x/messages", f"/v1/rooms/{room}-x/presence"):
        status, body = http(srv, "GET", path, t)
        assert status == 403 and body["error"]["code"] == "forbidden", (path, status, body)
    status, body = http(srv, "POST", f"/v1/rooms/{room}/messages", t, {"body": 1})
    assert status == 403 and body["error"]["code"] == "forbidden", (status, body)
    sender = mint_token("bo", rooms=[room])
    status, body = http(srv, "POST", f"/v1/rooms/{room}/messages", sender, {"body": 1})
    assert status == 201, body
    # A token whose claims are not room patterns is refused whole: 401.
    for bad in ({"rooms": ["a*b"]}, {"rooms": "lobby"}, {"send": [""]}, {"rooms": ["r"] * 65}):
        status, body = http(srv, "GET", f"/v1/rooms/{room}/messages", mint_token("ann", **bad))
        assert status == 401 and "claim" in body["error"]["message"], (bad, status, body)


def test_bad_claims_refuse_the_upgrade(srv):
    from websockets.exceptions import InvalidStatus

    for bad in ({"rooms": ["*x"]}, {"send": 5}):
        with pytest.raises(InvalidStatus) as e:
            srv.ws(None, token=mint_token("ann", **bad))
        assert e.value.response.status_code == 401


def test_admin_allowed_everything(srv, room):
    admin = mint_token("root", role="admin", rooms=[], send=[])
    c = srv.ws(None, token=admin)
    c.join(f"{room}-any")
    assert c.call("send", room=f"{room}-other", body=1)["op"] == "ack"
    assert c.call("history", room=f"{room}-z")["op"] == "history"
    status, _ = http(srv, "POST", f"/v1/rooms/{room}-q/messages", admin, {"body": 2})
    assert status == 201
    # The admin endpoints: past the role check (404: this node is not in a cluster) ...
    status, body = http(srv, "GET", "/v1/cluster", admin)
    assert status == 404, body
    # ... which a room-rich token without the role does not pass.
    status, body = http(srv, "GET", "/v1/cluster", mint_token("ann", rooms=["*"]))
    assert status == 403, body
    c.close()


def test_default_rooms_flag(start_server, room):
    s = start_server("--default-rooms", f"{room}-pub-*, {room}-lobby", "--anonymous")
    plain = s.ws("ann")  # a token without claims
    plain.join(f"{room}-lobby")
    plain.join(f"{room}-pub-1")
    assert forbidden(plain.call("join", room=f"{room}-private"))
    assert forbidden(plain.call("send", room=f"{room}-private", body=1))
    # A `rooms` claim replaces the default.
    own = s.ws(None, token=mint_token("bo", rooms=[f"{room}-private"]))
    own.join(f"{room}-private")
    assert forbidden(own.call("join", room=f"{room}-lobby"))
    # Anonymous users get the default.
    anon = s.ws(None, query="user=zed")
    anon.join(f"{room}-lobby")
    assert forbidden(anon.call("join", room=f"{room}-private"))
    status, _ = http(s, "GET", f"/v1/rooms/{room}-private/messages?user=zed")
    assert status == 403
    status, _ = http(s, "GET", f"/v1/rooms/{room}-lobby/messages?user=zed")
    assert status == 200
    for c in (plain, own, anon):
        c.close()
    # A default that is not patterns is a configuration error.
    bad = start_server("--default-rooms", "a*b", wait=False)
    bad.exit_checked = True
    assert bad.proc.wait(15) == 2
    bad.stop(5)  # collects the rest of its output
    assert "default-rooms" in bad.output(), bad.output()


@pytest.mark.timeout(60)
def test_refresh_keeps_the_connection_past_the_first_token(srv, room, leeway):
    lw = leeway[0]
    first = mint_token("ann", ttl=2, rooms=[room])
    kept = srv.ws(None, token=first)
    control = srv.ws(None, token=first)
    kept.join(room)
    r = kept.call("refresh", token=mint_token("ann", ttl=3600, rooms=[room]), ref="f1")
    assert r["op"] == "refreshed" and r["ref"] == "f1", r
    assert r["exp"] >= int(time.time()) + 3000, r
    # Past the first token's exp + leeway (and a margin): the control, not
    # refreshed, is closed 4001; the refreshed one is open and still a member.
    code, reason, _ = control.closed(timeout=2 + lw + 10)
    assert code == 4001, (code, reason)
    time.sleep(1)
    assert kept.call("ping")["op"] == "pong"
    assert kept.call("send", room=room, body="still here")["op"] == "ack"
    assert kept.wait(op="msg", room=room)["body"] == "still here"
    kept.close()


def test_refresh_with_another_sub_is_forbidden(srv, room):
    c = srv.ws(None, token=mint_token("ann", rooms=[room]))
    c.join(room)
    r = c.call("refresh", token=mint_token("mallory", rooms=["*"]), ref="x")
    assert forbidden(r, "x"), r
    # Still ann, with ann's rules.
    assert c.call("send", room=room, body=1)["op"] == "ack"
    assert c.wait(op="msg", room=room)["from"] == "ann"
    assert forbidden(c.call("join", room=f"{room}-other"))
    c.close()


def test_refresh_with_a_bad_token_is_unauthorized(srv, room):
    c = srv.ws(None, token=mint_token("ann", rooms=[room]))
    for bad in (mint_token("ann", ttl=-3600), mint_token("ann", secret="other"), "not-a-jwt",
                mint_token("ann", rooms=["a**"])):
        r = c.call("refresh", token=bad, ref="b")
        assert r["op"] == "error" and r["code"] == "unauthorized" and r["ref"] == "b", (bad, r)
    r = c.call("refresh", ref="m")
    assert r["op"] == "error" and r["code"] == "bad_request", r
    c.join(room)
    c.close()


def test_narrowing_refresh_leaves_rooms(srv, room):
    a, b, t1 = f"{room}-a", f"{room}-b", f"{room}-t-1"
    c = srv.ws(None, token=mint_token("ann", rooms=[a, b, f"{room}-t-*"]))
    peer = srv.ws(None, token=mint_token("bo"))
    for r in (a, b, t1):
        c.join(r)
    peer.join(b)
    c.drain(0.2)
    r = c.call("refresh", token=mint_token("ann", rooms=[a]), ref="n")
    assert r["op"] == "refreshed", r
    # The `left` frames came before `refreshed` (they wait in the queue `call` skipped past).
    left = [m for m in c.pending if m.get("op") == "left"]
    assert sorted(m["room"] for m in left) == sorted([b, t1]), list(c.pending)
    assert all(m.get("reason") == "forbidden" and "ref" not in m for m in left), left
    c.pending.clear()
    # The peer saw ann leave b.
    d = peer.wait(op="presence_diff", room=b)
    assert d["leaves"] == ["ann"], d
    # Sends, joins and reads there are forbidden now; its messages no longer arrive.
    assert forbidden(c.call("send", room=b, body=1))
    assert forbidden(c.call("join", room=t1))
    assert forbidden(c.call("history", room=b))
    assert peer.call("send", room=b, body="after")["op"] == "ack"
    assert c.call("send", room=a, body="kept")["op"] == "ack"
    got = c.drain(0.5)
    assert not [m for m in got if m.get("op") == "msg" and m["room"] != a], got
    assert any(m.get("op") == "msg" and m["room"] == a for m in got), got
    c.close()
    peer.close()


# --------------------------------------------------------------------------- the built-in page


def _browser():
    import os

    from cdp import CHROMIUM, Browser

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (scripts/test.sh installs it with apt-get install chromium)")
    return Browser()


def _page_connect(browser, srv, token, room):
    """Loads the page, puts `token` in its field (as pasting it would), connects and joins `room`."""
    browser.navigate(f"{srv.http_base}/?room={room}")
    browser.evaluate(f"document.querySelector('#token').value = {json.dumps(token)}")
    browser.click("#connect")
    browser.wait_for("!document.querySelector('#join').disabled")
    browser.click("#join")
    browser.wait_for("!document.querySelector('#send').disabled")


def _status(browser):
    return browser.evaluate("document.querySelector('#status').textContent")


@pytest.mark.timeout(90)
def test_page_renews_its_token_before_expiry(srv, room, leeway):
    """The page gets a fresh token a little before `exp` and hands it to the open connection with
    `refresh`; the connection outlives the first token. The refresh endpoint the page asks
    (with the refresh token it keeps from a sign-in) is answered here by the test: `fetch` is
    replaced in the page, and the page's kept refresh token set as a sign-in would."""
    lw = leeway[0]
    with _browser() as browser:
        first = mint_token("pat", ttl=4, rooms=[room])
        _page_connect(browser, srv, first, room)
        fresh = mint_token("pat", ttl=3600, rooms=[room])
        browser.evaluate("S.session = {refresh: 'refresh-1', sub: 'pat'}")
        browser.evaluate(
            "window.fetch = async (url, opts) => (String(url) === '/v1/auth/refresh' && opts.method === 'POST'"
            " && opts.headers['Content-Type'] === 'application/json'"
            " && JSON.parse(opts.body).refresh_token === 'refresh-1')"
            f" ? new Response(JSON.stringify({{access_token: {json.dumps(fresh)}, refresh_token: 'refresh-2'}}),"
            " {status: 200})"
            " : new Response('{}', {status: 404})"
        )
        browser.wait_for("document.querySelector('#status').textContent.startsWith('token renewed')", timeout=10)
        assert browser.evaluate("document.querySelector('#token').value") == fresh
        # Refresh tokens rotate: the page keeps the one of the answer.
        assert browser.evaluate("S.session.refresh") == "refresh-2"
        # Past the first token's exp + leeway: still connected, still in the room.
        time.sleep(4 + lw + 1)
        assert not browser.evaluate("document.querySelector('#send').disabled"), _status(browser)
        browser.type_text("#text", "after renewal")
        browser.click("#send")
        browser.wait_for(
            "Array.from(document.querySelectorAll('#messages .msg .body')).some(e => e.textContent === 'after renewal')"
        )

        # Without a fresh token anywhere the page says so, and the connection ends with 4001.
        _page_connect(browser, srv, mint_token("pat", ttl=3, rooms=[room]), room)
        browser.wait_for("document.querySelector('#status').textContent.includes('paste a new one')", timeout=10)
        browser.wait_for("document.querySelector('#status').textContent.includes('4001')", timeout=3 + lw + 10)

        # A token pasted while connected is switched to in place (Enter in the field).
        short = mint_token("pat", ttl=3, rooms=[room])
        _page_connect(browser, srv, short, room)
        pasted = mint_token("pat", ttl=3600, rooms=[room])
        browser.evaluate(
            f"(() => {{ const f = document.querySelector('#token'); f.value = {json.dumps(pasted)};"
            " f.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); })()"
        )
        browser.wait_for("document.querySelector('#status').textContent.startsWith('token renewed')")
        time.sleep(3 + lw + 1)
        assert not browser.evaluate("document.querySelector('#send').disabled"), _status(browser)


# --------------------------------------------------------------------------- a cluster


@pytest.mark.timeout(90)
def test_rules_hold_on_the_node_the_client_is_on(start_server, tmp_path, room):
    """Two nodes: a client on `a` with rules is refused rooms that `b` owns before anything is
    forwarded, is served the ones it may use, and a narrowing refresh on `a` leaves a room at
    its owner on `b` (a member connected to `b` sees the user leave)."""
    from cluster import Cluster

    cl = Cluster(start_server, tmp_path, ("a", "b")).start()
    allowed, denied = cl.rooms("b", f"{room}-", 2)
    c = cl["a"].ws(None, token=mint_token("ann", rooms=[allowed]))
    assert forbidden(c.call("join", room=denied, ref="d"), "d")
    assert forbidden(c.call("send", room=denied, body=1))
    c.join(allowed)
    peer = cl["b"].ws(None, token=mint_token("bo"))
    peer.join(allowed)
    assert c.call("send", room=allowed, body="over the link")["op"] == "ack"
    assert peer.wait(op="msg", room=allowed)["body"] == "over the link"
    status, _ = http(cl["a"].srv, "GET", f"/v1/rooms/{denied}/messages", mint_token("ann", rooms=[allowed]))
    assert status == 403
    r = c.call("refresh", token=mint_token("ann", rooms=[]), ref="n")
    assert r["op"] == "refreshed", r
    assert [m for m in c.pending if m.get("op") == "left"] == [{"op": "left", "room": allowed, "reason": "forbidden"}]
    c.pending.clear()
    d = peer.wait(op="presence_diff", room=allowed, timeout=10)
    assert d["leaves"] == ["ann"], d
    assert forbidden(c.call("send", room=allowed, body=2))
    c.close()
    peer.close()
    cl.stop_all()
