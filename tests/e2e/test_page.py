"""The built-in page at `GET /`, driven in headless Chromium.

Starts the real `roomcast` binary, loads the page, connects, joins, sends,
and checks through the DOM that the page shows its own messages, another
client's messages, history and presence, and that message bodies are shown
as text and never run as markup.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cdp import CHROMIUM, Browser  # noqa: E402

from websockets.sync.client import connect  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "page-secret-of-the-e2e-tests-0123456789"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing (scripts/test.sh installs it with apt-get install chromium)",
)


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint(sub, ttl=3600, secret=SECRET):
    """An HS256 JWT with `sub` and `exp`, as `roomcast token` makes."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + ttl}).encode())
    signing = f"{header}.{claims}".encode()
    sig = b64url(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return f"{header}.{claims}.{sig}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc, port, log, data):
        self.proc = proc
        self.port = port
        self.log = log
        self.data = data
        self.base = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/ws"


def start_server(*extra):
    """Starts `roomcast serve` on a free port with a fresh data directory."""
    binary = os.environ.get("ROOMCAST_BIN") or str(ROOT / "target" / "release" / "roomcast")
    if not os.path.exists(binary):
        pytest.fail(f"roomcast binary not found at {binary}: build it or set ROOMCAST_BIN")
    port = free_port()
    data = tempfile.mkdtemp(prefix="roomcast-page-data-")
    log = tempfile.TemporaryFile()
    env = dict(os.environ, ROOMCAST_JWT_SECRET=SECRET)
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data", data, "--threads", "2", *extra],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            log.seek(0)
            shutil.rmtree(data, ignore_errors=True)
            pytest.fail(f"roomcast exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                shutil.rmtree(data, ignore_errors=True)
                pytest.fail("roomcast did not listen within 20 s")
            time.sleep(0.05)
    return Server(proc, port, log, data)


def stop_server(server):
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server.log.close()
    shutil.rmtree(server.data, ignore_errors=True)


@pytest.fixture(scope="module")
def page_server():
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def anon_server():
    server = start_server("--anonymous")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def unique_room(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """An independent protocol client (Python websockets), for the other side."""

    def __init__(self, server, user):
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(
                server.ws_url,
                additional_headers={"Authorization": f"Bearer {mint(user)}"},
                subprotocols=["roomcast.v1"],
                open_timeout=10,
            )
        )
        self.refs = 0

    def request(self, op, reply_op, **fields):
        """Sends `op` with a fresh ref and returns the reply carrying that ref."""
        self.refs += 1
        ref = f"c{self.refs}"
        deadline = time.monotonic() + 10
        self.ws.send(json.dumps({"op": op, "ref": ref, **fields}))
        while True:
            m = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if m.get("ref") != ref:
                continue
            if m.get("op") == "error" and m.get("code") == "rate_limited":
                # The per-connection send budget ran out: wait as told, resend.
                time.sleep(m.get("retry_after_ms", 100) / 1000)
                self.ws.send(json.dumps({"op": op, "ref": ref, **fields}))
                continue
            assert m["op"] == reply_op, m
            return m

    def close(self):
        self._stack.close()


def navigate_with_fragment(browser, url):
    """Loads `url`, whose fragment the page removes from the address bar at
    once (so `Browser.navigate`, which waits for the URL as given, cannot be
    used); waits for the document without the fragment."""
    res = browser.page("Page.navigate", url=url)
    assert not res.get("errorText"), res
    bare = url.split("#", 1)[0]
    browser.wait_for(f"location.href === {json.dumps(bare)} && document.readyState === 'complete'")


def open_page(browser, server, user, room):
    """Loads the page with a token in the fragment (it connects with it at once) and joins."""
    navigate_with_fragment(browser, f"{server.base}/?room={room}#token={mint(user)}")
    assert browser.evaluate("document.querySelector('#room').value") == room
    assert browser.evaluate("document.querySelector('#token').value").count(".") == 2
    browser.wait_for("!document.querySelector('#join').disabled")
    browser.click("#join")
    browser.wait_for("!document.querySelector('#send').disabled")


def shown(browser):
    """[(seq, from, body text)] as the page shows them, in DOM order."""
    return browser.evaluate(
        "Array.from(document.querySelectorAll('#messages .msg')).map(e => ["
        "Number(e.dataset.seq), e.querySelector('.from').textContent,"
        " e.querySelector('.body').textContent])"
    )


def page_send(browser, text):
    browser.type_text("#text", text)
    browser.click("#send")


def wait_body(browser, text, timeout=10):
    js = json.dumps(text)
    return browser.wait_for(
        "(() => { const e = Array.from(document.querySelectorAll('#messages .msg'))"
        f".find(e => e.querySelector('.body').textContent === {js});"
        " return e ? Number(e.dataset.seq) : 0; })()",
        timeout,
    )


def members(browser):
    return browser.evaluate(
        "Array.from(document.querySelectorAll('#presence li[data-user]')).map(e => e.dataset.user)"
    )


def test_page_chat_with_another_client(page_server, browser):
    room = unique_room("lobby")
    open_page(browser, page_server, "ann", room)
    browser.wait_for("document.querySelector('#presence li[data-user=\"ann\"]')")

    page_send(browser, "hello from the page")
    seq = wait_body(browser, "hello from the page")
    assert seq >= 1
    assert browser.evaluate("document.querySelector('#text').value") == ""

    bob = Client(page_server, "bob")
    try:
        joined = bob.request("join", "joined", room=room)
        assert joined["seq"] >= seq
        ack = bob.request("send", "ack", room=room, body={"text": "hi from bob"}, id="bob-1")
        assert wait_body(browser, "hi from bob") == ack["seq"]
        browser.wait_for("document.querySelector('#presence li[data-user=\"bob\"]')")
        assert sorted(members(browser)) == ["ann", "bob"]

        rows = shown(browser)
        assert [r[0] for r in rows] == sorted({r[0] for r in rows}), "ordered by seq, no duplicate"
        assert (seq, "ann", "hello from the page") in [tuple(r) for r in rows]
        assert (ack["seq"], "bob", "hi from bob") in [tuple(r) for r in rows]
        # Our own message is marked as ours.
        assert browser.evaluate(f"document.querySelector('.msg[data-seq=\"{seq}\"]').classList.contains('mine')")
        browser.screenshot(str(ROOT / "target" / "page.png"))
    finally:
        bob.close()

    # Bob's only connection is gone: the page drops him from presence.
    browser.wait_for("!document.querySelector('#presence li[data-user=\"bob\"]')")
    assert members(browser) == ["ann"]


def test_page_shows_history_sorted_without_duplicates(page_server, browser):
    room = unique_room("hist")
    cid = Client(page_server, "cid")
    try:
        for i in range(5):
            cid.request("send", "ack", room=room, body={"text": f"old {i}"})
        cid.request("send", "ack", room=room, body=[1, "two", None])
        open_page(browser, page_server, "dee", room)
        browser.wait_for("document.querySelectorAll('#messages .msg').length === 6")
        rows = shown(browser)
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert [r[2] for r in rows[:5]] == [f"old {i}" for i in range(5)]
        # A body that is not {"text": ...} is shown as its JSON.
        assert json.loads(rows[5][2]) == [1, "two", None]
        assert {r[1] for r in rows} == {"cid"}

        # Live messages continue after the history, still without duplicates.
        cid.request("send", "ack", room=room, body={"text": "new"})
        assert wait_body(browser, "new") == 7
        assert [r[0] for r in shown(browser)] == list(range(1, 8))
    finally:
        cid.close()


def test_page_renders_bodies_as_text(page_server, browser):
    room = unique_room("xss")
    open_page(browser, page_server, "eve-watcher", room)
    evil = (
        '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
        '<b id="injected">bold</b>'
    )
    mal = Client(page_server, '<i id="injected-user">mallory</i>')
    try:
        mal.request("join", "joined", room=room)
        mal.request("send", "ack", room=room, body={"text": evil})
        mal.request("send", "ack", room=room, body=evil)
        wait_body(browser, evil)
        wait_body(browser, json.dumps(evil))
        browser.wait_for("document.querySelectorAll('#presence li[data-user]').length === 2")
        # Give an injected onerror handler time to run, were it ever inserted.
        time.sleep(0.3)
        assert browser.evaluate("document.querySelector('#injected')") is None
        assert browser.evaluate("document.querySelector('#injected-user')") is None
        assert browser.evaluate("document.querySelectorAll('#messages img, #messages script, #presence i').length") == 0
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        assert '<i id="injected-user">mallory</i>' in members(browser)
    finally:
        mal.close()


def test_page_reports_errors(page_server, browser):
    open_page(browser, page_server, "fay", unique_room("ok"))
    page_send(browser, "before the refused join")
    wait_body(browser, "before the refused join")
    # A room name the protocol refuses: the error frame reaches the status line.
    browser.evaluate("document.querySelector('#room').value = 'no spaces allowed!'")
    browser.click("#join")
    status = browser.wait_for(
        "(() => { const s = document.querySelector('#status');"
        " return s.className === 'err' && s.textContent; })()"
    )
    assert "bad_request" in status
    # The refused join leaves the room in view as it was.
    assert [r[2] for r in shown(browser)] == ["before the refused join"]
    assert browser.evaluate("document.querySelector('#send').disabled") is False

    # A token signed with another secret is refused before the upgrade.
    bad = mint("fay", secret="not-the-secret")
    navigate_with_fragment(browser, f"{page_server.base}/?room=lobby#token={bad}")
    status = browser.wait_for(
        "(() => { const s = document.querySelector('#status');"
        " return s.textContent.startsWith('disconnected') && s.textContent; })()"
    )
    assert "1006" in status
    assert browser.evaluate("document.querySelector('#join').disabled") is True


def test_page_loads_older_history(page_server, browser):
    room = unique_room("older")
    gil = Client(page_server, "gil")
    try:
        for i in range(1, 56):
            gil.request("send", "ack", room=room, body={"text": f"m{i}"})
    finally:
        gil.close()
    open_page(browser, page_server, "hal", room)
    # The first page is the newest 50; the rest comes on request.
    browser.wait_for("document.querySelectorAll('#messages .msg').length === 50")
    assert [r[0] for r in shown(browser)] == list(range(6, 56))
    browser.wait_for("!document.querySelector('#more').hidden")
    browser.click("#more")
    browser.wait_for("document.querySelectorAll('#messages .msg').length === 55")
    assert [r[2] for r in shown(browser)] == [f"m{i}" for i in range(1, 56)]
    browser.wait_for("document.querySelector('#more').hidden")


def test_page_switches_rooms(page_server, browser):
    first, second = unique_room("one"), unique_room("two")
    ivy = Client(page_server, "ivy")
    try:
        ivy.request("send", "ack", room=second, body={"text": "in the second room"})
        open_page(browser, page_server, "jo", first)
        page_send(browser, "in the first room")
        wait_body(browser, "in the first room")
        browser.evaluate(f"document.querySelector('#room').value = {json.dumps(second)}")
        browser.click("#join")
        wait_body(browser, "in the second room")
        assert [r[2] for r in shown(browser)] == ["in the second room"]
        # The first room was left: a message there does not reach the page.
        ivy.request("send", "ack", room=first, body={"text": "late in the first"})
        ivy.request("send", "ack", room=second, body={"text": "later in the second"})
        wait_body(browser, "later in the second")
        assert [r[2] for r in shown(browser)] == ["in the second room", "later in the second"]
        assert members(browser) == ["jo"]
    finally:
        ivy.close()


def test_page_anonymous_user(anon_server, browser):
    room = unique_room("anon")
    browser.navigate(f"{anon_server.base}/?user=kim&room={room}")
    assert browser.evaluate("document.querySelector('#token').value") == ""
    browser.click("#connect")
    browser.wait_for("!document.querySelector('#join').disabled")
    browser.click("#join")
    browser.wait_for("!document.querySelector('#send').disabled")
    page_send(browser, "no token needed")
    seq = wait_body(browser, "no token needed")
    assert shown(browser) == [[seq, "kim", "no token needed"]]
    browser.wait_for("document.querySelector('#presence li[data-user=\"kim\"]')")


def status_text(browser):
    return browser.evaluate("document.querySelector('#status').textContent")


def test_page_takes_its_token_from_the_fragment(page_server, browser):
    room = unique_room("frag")
    token = mint("lou")
    navigate_with_fragment(browser, f"{page_server.base}/?room={room}#token={token}")
    browser.wait_for("document.querySelector('#status').textContent === 'connected as lou'")
    # The fragment is gone from the address bar (and so from the history and
    # from whatever the address bar is copied into); the query is kept.
    assert browser.evaluate("location.hash") == ""
    assert browser.evaluate("location.href") == f"{page_server.base}/?room={room}"
    # The OAuth callback's fragment works the same way, and keeps its
    # refresh token in memory only.
    other = mint("lou")
    navigate_with_fragment(
        browser, f"{page_server.base}/?room={room}#access_token={other}&token_type=Bearer"
        "&expires_in=900&refresh_token=ab12",
    )
    browser.wait_for("document.querySelector('#status').textContent === 'connected as lou'")
    assert browser.evaluate("location.hash") == ""
    assert browser.evaluate("S.session && S.session.refresh") == "ab12"
    assert browser.evaluate("localStorage.length + sessionStorage.length") == 0


def test_page_ignores_a_token_in_the_query(page_server, browser):
    # A query string lands in access logs: the page no longer reads a token there.
    browser.navigate(f"{page_server.base}/?token={mint('max')}&room=lobby")
    assert browser.evaluate("document.querySelector('#token').value") == ""
    assert browser.evaluate("document.querySelector('#connect').disabled") is False
    assert status_text(browser) == "not connected"


def test_page_websocket_url_carries_no_token(page_server, browser):
    """The token goes as a `bearer.` subprotocol entry, not in the URL: the
    handshake as Chromium sent it (DevTools Network events)."""
    browser.page("Network.enable")
    try:
        browser.events.clear()
        room = unique_room("nourl")
        open_page(browser, page_server, "ned", room)
        handshakes = [p for m, p in browser.events if m == "Network.webSocketWillSendHandshakeRequest"]
        created = [p["url"] for m, p in browser.events if m == "Network.webSocketCreated"]
        assert handshakes and created, list(browser.events)[-20:]
        assert created[-1] == page_server.ws_url, created
        headers = {k.lower(): v for k, v in handshakes[-1]["request"]["headers"].items()}
        offered = [x.strip() for x in headers["sec-websocket-protocol"].split(",")]
        assert offered[0] == "roomcast.v1" and len(offered) == 2, offered
        assert offered[1].startswith("bearer.") and offered[1].count(".") == 3, offered
        assert "authorization" not in headers
        answers = [p for m, p in browser.events if m == "Network.webSocketHandshakeResponseReceived"]
        assert answers and answers[-1]["response"]["status"] == 101, answers
        echoed = {k.lower(): v for k, v in answers[-1]["response"]["headers"].items()}
        assert echoed.get("sec-websocket-protocol") == "roomcast.v1", echoed
        # The entry is the page's token: the user it says it is.
        sent = offered[1][len("bearer."):]
        claims = json.loads(base64.urlsafe_b64decode(sent.split(".")[1] + "=="))
        assert claims["sub"] == "ned", claims
        # And the server logged nothing of it.
        page_server.log.seek(0)
        assert sent.encode() not in page_server.log.read()
    finally:
        browser.page("Network.disable")


def test_page_login_form_registers_and_signs_in(page_server, browser):
    name = f"pw-{uuid.uuid4().hex[:8]}"
    room = unique_room("login")
    browser.navigate(f"{page_server.base}/?room={room}")
    browser.type_text("#login-user", name)
    browser.type_text("#login-pass", "correct horse battery")
    browser.click("#login-register")
    browser.wait_for(f"document.querySelector('#status').textContent === 'connected as {name}'", timeout=20)
    # The password does not stay in the field; the refresh token stays in memory only.
    assert browser.evaluate("document.querySelector('#login-pass').value") == ""
    first = browser.evaluate("S.session && S.session.refresh")
    assert isinstance(first, str) and len(first) == 64, first
    assert browser.evaluate("S.session.sub") == name
    assert browser.evaluate("localStorage.length + sessionStorage.length") == 0
    assert browser.evaluate("document.cookie") == ""
    browser.click("#join")
    browser.wait_for("!document.querySelector('#send').disabled")
    page_send(browser, "signed up")
    # Wait first: the left side of `==` is evaluated before the right.
    seq = wait_body(browser, "signed up")
    assert shown(browser) == [[seq, name, "signed up"]]

    # Sign out (disconnect, forget the token), then sign in with the password.
    browser.click("#disconnect")
    browser.wait_for("document.querySelector('#status').textContent.startsWith('disconnected')")
    browser.evaluate("document.querySelector('#token').value = ''")
    browser.type_text("#login-pass", "wrong password!")
    browser.click("#login-signin")
    browser.wait_for("document.querySelector('#status').textContent.startsWith('sign-in failed')", timeout=20)
    assert browser.evaluate("document.querySelector('#connect').disabled") is False
    browser.evaluate("document.querySelector('#login-pass').value = ''")
    browser.type_text("#login-pass", "correct horse battery")
    browser.click("#login-signin")
    browser.wait_for(f"document.querySelector('#status').textContent === 'connected as {name}'", timeout=20)
    signed_in = browser.evaluate("S.session.refresh")
    assert signed_in != first

    # Renewal spends the kept refresh token and keeps the one it rotated to.
    # (A second later, so that the new access token differs from the current one.)
    time.sleep(1.1)
    browser.evaluate("renew()")
    browser.wait_for("document.querySelector('#status').textContent.startsWith('token renewed')", timeout=20)
    rotated = browser.evaluate("S.session.refresh")
    assert rotated not in (first, signed_in), rotated
    assert subOf_page(browser) == name
    # The refresh token the page started with is spent: the server refuses it.
    r = post_json(page_server, "/v1/auth/refresh", {"refresh_token": signed_in})
    assert r[0] == 401, r
    assert not [line for line in browser.console if line.startswith("exception")], browser.console


def subOf_page(browser):
    return browser.evaluate("subOf(S.token)")


def post_json(server, path, body):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()
