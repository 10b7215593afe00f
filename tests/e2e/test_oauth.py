"""OAuth 2.0 sign-in with PKCE against a real OpenID provider (the npm package
oidc-provider, tests/oauth/provider.mjs) on 127.0.0.1: the browser's part is
played with plain HTTP requests and a cookie jar (the provider's development
login and consent pages are submitted as forms).

Attacks: a replayed, expired, forged or another provider's state; a code
redeemed with another flow's verifier; open redirects; a provider that never
answers; a provider that answers with a redirect."""

from __future__ import annotations

import http.client
import base64
import http.cookiejar
import http.server
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import base_env
from helpers import HOST, assert_json_error, free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
OP_DIR = REPO / "tests" / "oauth"
BASIC_SECRET = "basic-client-secret-0123456789"
POST_SECRET = "post-client-secret-0123456789"


# --------------------------------------------------------------------------- the provider


@pytest.fixture(scope="module")
def rc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def op(rc_port):
    """The OpenID provider, with two clients registered for roomcast's
    callbacks on `rc_port`: one authenticating with HTTP Basic, one with
    the secret in the form body."""
    if shutil.which("node") is None or not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tests/oauth needs node and `npm ci --prefix tests/oauth` (scripts/test.sh does it)",
                    pytrace=False)
    port = free_port()
    cb = f"http://{HOST}:{rc_port}/v1/auth/oauth"
    clients = [
        {"client_id": "rc-basic", "client_secret": BASIC_SECRET, "redirect_uris": [f"{cb}/op/callback"],
         "token_endpoint_auth_method": "client_secret_basic"},
        {"client_id": "rc-post", "client_secret": POST_SECRET, "redirect_uris": [f"{cb}/op-post/callback"],
         "token_endpoint_auth_method": "client_secret_post"},
    ]
    proc = subprocess.Popen(
        ["node", str(OP_DIR / "provider.mjs"), str(port), json.dumps(clients)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=OP_DIR,
    )
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode("utf-8", "replace")
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if line.startswith("listening "):
            break
    else:
        proc.kill()
    if not lines or not lines[-1].startswith("listening "):
        proc.kill()
        pytest.fail("the OpenID provider did not start:\n" + "".join(lines), pytrace=False)
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    yield f"http://{HOST}:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Silent:
    """A listening socket that never accepts: connects succeed, nothing is ever answered."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]


class Bouncer:
    """An HTTP server answering everything with a 302 to `trap`, and a trap
    server counting the requests it gets."""

    def __init__(self):
        self.trap_hits = 0
        outer = self

        class Trap(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.trap_hits += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_GET

            def log_message(self, *a):
                pass

        self.trap = http.server.ThreadingHTTPServer((HOST, 0), Trap)
        trap_url = f"http://{HOST}:{self.trap.server_address[1]}/token"

        class Bounce(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                self.send_response(307)
                self.send_header("Location", trap_url)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *a):
                pass

        self.bounce = http.server.ThreadingHTTPServer((HOST, 0), Bounce)
        self.port = self.bounce.server_address[1]
        for s in (self.trap, self.bounce):
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self):
        for s in (self.trap, self.bounce):
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def silent():
    s = Silent()
    yield s
    s.sock.close()


@pytest.fixture(scope="module")
def bouncer():
    b = Bouncer()
    yield b
    b.close()


def oauth_toml(rc_port, issuer, silent_port, bounce_port) -> str:
    cb = f"http://{HOST}:{rc_port}/v1/auth/oauth"
    fixed = lambda port: "\n".join(  # noqa: E731
        f'{k}-endpoint = "http://{HOST}:{port}/{k}"' for k in ("authorization", "token", "userinfo"))
    return f"""
[oauth.op]
issuer = "{issuer}"
client-id = "rc-basic"
redirect-uri = "{cb}/op/callback"

[oauth.op-post]
issuer = "{issuer}"
client-id = "rc-post"
client-secret = "{POST_SECRET}"
client-auth = "client_secret_post"
redirect-uri = "{cb}/op-post/callback"
scopes = ["openid"]

[oauth.hang]
issuer = "http://{HOST}:{silent_port}"
client-id = "rc"
client-auth = "none"
redirect-uri = "{cb}/hang/callback"
{fixed(silent_port)}

[oauth.bounce]
issuer = "http://{HOST}:{bounce_port}"
client-id = "rc"
client-auth = "none"
redirect-uri = "{cb}/bounce/callback"
{fixed(bounce_port)}
"""


@pytest.fixture(scope="module")
def rc(module_servers, rc_port, op, silent, bouncer, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("oauth") / "roomcast.toml"
    cfg.write_text(oauth_toml(rc_port, op, silent.port, bouncer.port))
    return module_servers("--config", str(cfg), "--oauth-timeout", "1s", port=rc_port,
                          env={"ROOMCAST_OAUTH_OP_SECRET": BASIC_SECRET})


# --------------------------------------------------------------------------- the browser


class Browser:
    """Plain HTTP requests with a cookie jar; redirects are returned, never followed."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), self._NoRedirect)

    def go(self, url, form=None, timeout=15.0):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, method="POST" if form is not None else "GET")
        try:
            with self.opener.open(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def start(rc, browser, provider="op", redirect=None):
    """`/start`: returns the provider URL roomcast sends the browser to."""
    q = "" if redirect is None else "?" + urllib.parse.urlencode({"redirect": redirect})
    status, headers, body = browser.go(f"{rc.http_base}/v1/auth/oauth/{provider}/start{q}")
    assert status == 302, (status, body)
    assert headers.get("cache-control") == "no-store", headers
    return headers["location"]


def sign_in_at_provider(browser, url, login):
    """Follows the provider's redirects and submits its login and consent
    pages until it sends the browser back to roomcast; returns that URL."""
    origin = urllib.parse.urlsplit(url)._replace(path="", query="", fragment="").geturl()
    for _ in range(20):
        if not url.startswith(origin):
            return url
        status, headers, body = browser.go(url)
        if status in (302, 303):
            url = urllib.parse.urljoin(url, headers["location"])
            continue
        assert status == 200, (status, body[:500])
        html = body.decode()
        action = re.search(r'<form[^>]*action="([^"]+)"', html)
        prompt = re.search(r'name="prompt" value="(\w+)"', html)
        assert action and prompt, html[:1000]
        form = {"prompt": prompt.group(1)}
        if form["prompt"] == "login":
            form.update(login=login, password="any")
        status, headers, body = browser.go(urllib.parse.urljoin(url, action.group(1)), form=form)
        assert status in (302, 303), (status, body[:500])
        url = urllib.parse.urljoin(url, headers["location"])
    pytest.fail(f"the provider never sent the browser back; last at {url}")


def login(rc, browser, login_name, provider="op", redirect=None):
    """A whole sign-in up to roomcast's callback URL (not yet visited)."""
    auth = start(rc, browser, provider, redirect)
    back = sign_in_at_provider(browser, auth, login_name)
    assert back.startswith(f"{rc.http_base}/v1/auth/oauth/{provider}/callback?"), back
    return back


def finish(browser, callback_url):
    """Visits roomcast's callback; returns (status, headers, body)."""
    return browser.go(callback_url)


def fragment_tokens(location):
    path, _, frag = location.partition("#")
    return path, dict(urllib.parse.parse_qsl(frag))


def jwt_sub(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def error_of(status, headers, body, want_status, code):
    assert status == want_status, (status, body)
    assert headers.get("cache-control") == "no-store", headers
    doc = json.loads(body)
    assert doc["error"]["code"] == code, doc
    return doc["error"]["message"]


# --------------------------------------------------------------------------- the tests


def test_start_sends_the_browser_to_the_provider_with_pkce(rc, op):
    url = start(rc, Browser(), redirect="/rooms/lobby")
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == op, "the endpoint comes from discovery"
    q = dict(urllib.parse.parse_qsl(parts.query))
    assert q["response_type"] == "code"
    assert q["client_id"] == "rc-basic"
    assert q["redirect_uri"] == f"{rc.http_base}/v1/auth/oauth/op/callback"
    assert q["scope"] == "openid"
    assert q["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"]), q
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["state"]), "256 random bits"
    assert "verifier" not in url
    again = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start(rc, Browser())).query))
    assert again["state"] != q["state"] and again["code_challenge"] != q["code_challenge"]


@pytest.mark.parametrize("provider,name", [("op", "alice"), ("op-post", "bob")])
def test_sign_in_ends_with_roomcast_tokens_in_the_fragment(rc, provider, name):
    browser = Browser()
    back = login(rc, browser, name, provider=provider, redirect="/rooms/lobby?x=1")
    status, headers, body = finish(browser, back)
    assert status == 302, (status, body)
    assert headers.get("cache-control") == "no-store", headers
    path, tokens = fragment_tokens(headers["location"])
    assert path == "/rooms/lobby?x=1", "the query is the page's own, untouched"
    assert "access_token" not in path and "token" not in urllib.parse.urlsplit(path).query
    assert tokens.get("token_type") == "Bearer", tokens
    assert int(tokens["expires_in"]) > 0
    if "refresh_token" in tokens:
        assert tokens["refresh_token"]
    access = tokens["access_token"]
    assert jwt_sub(access) == f"{provider}:{name}"
    # The token opens a WebSocket.
    c = rc.ws(token=access)
    try:
        c.send({"op": "join", "room": f"oauth-{provider}", "ref": "j"})
        reply = c.wait(lambda m: m.get("ref") == "j", timeout=5)
        assert reply.get("type") != "error", reply
    finally:
        c.conn.close()
    # The same subject signs in as the same user again.
    back = login(rc, browser, name, provider=provider)
    status, headers, _ = finish(browser, back)
    assert status == 302
    assert jwt_sub(fragment_tokens(headers["location"])[1]["access_token"]) == f"{provider}:{name}"
    assert fragment_tokens(headers["location"])[0] == "/"


def test_a_replayed_state_is_refused(rc):
    browser = Browser()
    back = login(rc, browser, "carol")
    status, _, body = finish(browser, back)
    assert status == 302, body
    msg = error_of(*finish(browser, back), 400, "invalid_state")
    assert "already used" in msg


def test_a_callback_from_another_browser_is_refused(rc):
    # The attacker signs in at the provider and hands the callback URL to a
    # victim (login CSRF), or someone finishes a leaked callback URL: either
    # way the browser finishing is not the one that started.
    attacker = Browser()
    back = login(rc, attacker, "mallory")
    victim = Browser()
    msg = error_of(*finish(victim, back), 400, "invalid_state")
    assert "another browser" in msg
    # The state is spent by the attempt: the attacker cannot use it either.
    error_of(*finish(attacker, back), 400, "invalid_state")
    # The binding cookie is HttpOnly, scoped to the OAuth endpoints, and cleared at the end.
    status, headers, _ = attacker.go(f"{rc.http_base}/v1/auth/oauth/op/start")
    assert status == 302
    cookie = headers.get("set-cookie", "")
    assert cookie.startswith("roomcast-oauth-") and "HttpOnly" in cookie and "SameSite=Lax" in cookie, cookie
    assert "Path=/v1/auth/oauth/" in cookie, cookie


def test_forged_states_are_refused(rc):
    browser = Browser()
    base = f"{rc.http_base}/v1/auth/oauth/op/callback"
    for state in [secrets.token_urlsafe(32)[:43], "x", "", "A" * 43, "../" * 15]:
        q = urllib.parse.urlencode({"code": "abc", "state": state})
        error_of(*browser.go(f"{base}?{q}"), 400, "invalid_state")
    error_of(*browser.go(f"{base}?code=abc"), 400, "invalid_state")


def test_another_providers_state_is_refused(rc):
    browser = Browser()
    back = login(rc, browser, "dave", provider="op")
    moved = back.replace("/oauth/op/callback", "/oauth/op-post/callback")
    msg = error_of(*finish(browser, moved), 400, "invalid_state")
    assert "another provider" in msg
    # Spent by that attempt: it no longer works where it belongs either.
    error_of(*finish(browser, back), 400, "invalid_state")


def test_a_code_redeemed_with_another_flows_verifier_is_refused(rc):
    """Two sign-ins, their codes swapped between their states: each code then
    reaches the provider with the other flow's PKCE verifier."""
    b1, b2 = Browser(), Browser()
    back1 = login(rc, b1, "erin")
    back2 = login(rc, b2, "erin")
    q1 = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back1).query))
    q2 = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back2).query))
    base = back1.split("?")[0]
    swapped = f"{base}?{urllib.parse.urlencode({'code': q2['code'], 'state': q1['state']})}"
    msg = error_of(*finish(b1, swapped), 400, "oauth_refused")
    assert "invalid_grant" in msg, msg


@pytest.mark.parametrize("evil", ["//evil.test", "https://evil.test", "/\\evil.test", "/%2F%2Fevil.test",
                                  "/%5Cevil.test", "/\t/evil.test", "javascript:alert(1)",
                                  "/v1/auth/oauth/op/start", "/%76%31/auth/oauth/op/start"])
def test_open_redirects_land_on_the_root(rc, evil):
    browser = Browser()
    back = login(rc, browser, "frank", redirect=evil)
    status, headers, body = finish(browser, back)
    assert status == 302, body
    path, tokens = fragment_tokens(headers["location"])
    assert path == "/", headers["location"]
    assert tokens["access_token"]


def test_an_expired_state_is_refused(start_server, tmp_path, silent):
    port = free_port()
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(f"""
[oauth.short]
issuer = "http://{HOST}:{silent.port}"
client-id = "rc"
client-auth = "none"
redirect-uri = "http://{HOST}:{port}/v1/auth/oauth/short/callback"
authorization-endpoint = "http://{HOST}:{silent.port}/auth"
token-endpoint = "http://{HOST}:{silent.port}/token"
userinfo-endpoint = "http://{HOST}:{silent.port}/userinfo"
""")
    srv = start_server("--config", str(cfg), "--oauth-state-ttl", "1s", port=port)
    browser = Browser()
    auth = start(srv, browser, "short")
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(auth).query))["state"]
    time.sleep(1.5)
    q = urllib.parse.urlencode({"code": "abc", "state": state})
    msg = error_of(*browser.go(f"{srv.http_base}/v1/auth/oauth/short/callback?{q}"), 400, "invalid_state")
    assert "expired" in msg


def test_a_provider_that_never_answers_times_out(rc):
    browser = Browser()
    auth = start(rc, browser, "hang")
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(auth).query))["state"]
    q = urllib.parse.urlencode({"code": "abc", "state": state})
    t0 = time.monotonic()
    # The browser's own timeout (15 s) is the bound; roomcast's is 1 s.
    got = browser.go(f"{rc.http_base}/v1/auth/oauth/hang/callback?{q}", timeout=15)
    elapsed = time.monotonic() - t0
    msg = error_of(*got, 504, "provider_timeout")
    print(f"timeout answered after {elapsed:.2f}s (oauth-timeout 1s)")
    assert "1s" in msg or "answer" in msg


def test_a_provider_redirect_is_not_followed(rc, bouncer):
    browser = Browser()
    auth = start(rc, browser, "bounce")
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(auth).query))["state"]
    q = urllib.parse.urlencode({"code": "abc", "state": state})
    msg = error_of(*browser.go(f"{rc.http_base}/v1/auth/oauth/bounce/callback?{q}"), 502, "provider_error")
    assert "redirect" in msg
    assert bouncer.trap_hits == 0, "the redirect was followed"


def test_the_provider_saying_no(rc):
    browser = Browser()
    auth = start(rc, browser)
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(auth).query))["state"]
    q = urllib.parse.urlencode({"error": "access_denied", "state": state})
    msg = error_of(*browser.go(f"{rc.http_base}/v1/auth/oauth/op/callback?{q}"), 400, "oauth_refused")
    assert "access_denied" in msg


def test_unknown_provider_and_method(rc):
    r = rc.request("GET", "/v1/auth/oauth/nope/start")
    assert_json_error(r, 404, "not_found")
    r = rc.request("POST", "/v1/auth/oauth/op/start", body=b"")
    assert_json_error(r, 405, "method_not_allowed")
    r = rc.request("GET", "/v1/auth/oauth/op/other")
    assert_json_error(r, 404, "not_found")


def run_serve(roomcast_bin, args, env=None):
    cwd = REPO / "target"
    return subprocess.run([roomcast_bin, "serve", *args], env=base_env(env), cwd=cwd, capture_output=True,
                          text=True, timeout=20)


GOOD = """
[oauth.op]
issuer = "https://idp.example"
client-id = "rc"
client-secret = "s3cret-s3cret"
redirect-uri = "https://chat.example/v1/auth/oauth/op/callback"
"""


@pytest.mark.parametrize("toml,env,parts", [
    (GOOD.replace("https://idp", "http://idp"), {}, ["oauth.op.issuer", "https://"]),
    (GOOD.replace('client-secret = "s3cret-s3cret"\n', ""), {}, ["oauth.op.client-secret",
                                                                  "ROOMCAST_OAUTH_OP_SECRET"]),
    (GOOD + 'colour = "blue"\n', {}, ["colour", "[oauth.NAME]"]),
    (GOOD.replace("[oauth.op]", "[oauth.Op]"), {}, ["a-z"]),
    (GOOD.replace("/op/callback", "/other/callback"), {}, ["oauth.op.redirect-uri", "/v1/auth/oauth/op/callback"]),
    (GOOD + 'client-auth = "magic"\n', {}, ["client-auth", "magic"]),
], ids=["http-issuer", "no-secret", "unknown-key", "bad-name", "wrong-callback", "bad-client-auth"])
def test_bad_oauth_config_exits_2_with_one_line(roomcast_bin, tmp_path, toml, env, parts):
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(toml)
    r = run_serve(roomcast_bin, ["--data", str(tmp_path / "data"), "--listen", f"{HOST}:{free_port()}",
                                 "--config", str(cfg)], env=env)
    out = r.stderr + r.stdout
    assert r.returncode == 2, out
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 1, out
    for p in parts:
        assert p in lines[0], (p, lines[0])


def test_the_secret_comes_from_the_environment(roomcast_bin, tmp_path):
    """Without a secret in the file, ROOMCAST_OAUTH_OP_SECRET is enough (the
    server starts; SIGTERM ends it)."""
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(GOOD.replace('client-secret = "s3cret-s3cret"\n', ""))
    port = free_port()
    proc = subprocess.Popen([roomcast_bin, "serve", "--data", str(tmp_path / "d"), "--listen", f"{HOST}:{port}",
                             "--config", str(cfg)], env=base_env({"ROOMCAST_OAUTH_OP_SECRET": "from-env"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()
    finally:
        proc.terminate()
        proc.wait(15)
    os.path.exists(cfg)


def test_sign_ins_started_per_address_are_limited(rc):
    # From an address of its own, so the module's other tests keep theirs.
    def start_from(addr):
        c = http.client.HTTPConnection("127.0.0.1", rc.port, timeout=10, source_address=(addr, 0))
        try:
            c.request("GET", "/v1/auth/oauth/op/start")
            r = c.getresponse()
            r.read()
            return r.status, r.getheader("Retry-After")
        finally:
            c.close()

    statuses = [start_from("127.0.0.77")[0] for _ in range(60)]
    assert statuses == [302] * 60, statuses
    status, retry = start_from("127.0.0.77")
    assert status == 429 and retry and int(retry) >= 1, (status, retry)
    # Another address is not affected.
    assert start_from("127.0.0.78")[0] == 302
