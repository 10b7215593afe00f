"""Browser safety: the Origin allow-list on the WebSocket upgrade and /v1/*, CORS
preflights, and the headers of the built-in page and the auth endpoints."""

import pytest
from websockets.exceptions import InvalidStatus

from test_config import assert_config_error, run_bin

EVIL = "http://evil.test"


def own(server):
    return f"http://127.0.0.1:{server.port}"


def refused_status(server, **kw):
    with pytest.raises(InvalidStatus) as e:
        server.ws("ann", **kw)
    return e.value.response.status_code


def test_upgrade_from_an_evil_origin_is_refused(server):
    assert refused_status(server, headers={"Origin": EVIL}) == 403
    # The same request from the server's own page, or from no browser at all, goes through.
    server.ws("ann", headers={"Origin": own(server)}).close()
    server.ws("ann").close()
    # A look-alike host, another scheme and the opaque origin are other origins.
    for o in [own(server) + ".evil.test", f"https://127.0.0.1:{server.port}", "null"]:
        assert refused_status(server, headers={"Origin": o}) == 403, o
    assert server.metrics().total("roomcast_origin_refused_total") >= 4


def test_http_from_an_evil_origin_is_refused(server, room):
    r = server.request("POST", f"/v1/rooms/{room}/messages", body=b'{"body":1}',
                       headers={"Origin": EVIL, "Authorization": f"Bearer {server.token('ann')}",
                                "Content-Type": "application/json"})
    assert r.status == 403, r
    assert r.json()["error"]["code"] == "forbidden"
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}, r
    # Nothing was published.
    r = server.request("GET", f"/v1/rooms/{room}/messages", headers={"Authorization": f"Bearer {server.token('ann')}"})
    assert r.status == 200 and r.json()["messages"] == [], r


def test_cors_preflight_allowed_and_refused(server, room):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    r = server.request("OPTIONS", f"/v1/rooms/{room}/messages", headers={"Origin": own(server), **ask})
    assert r.status == 204, r
    assert r.header("access-control-allow-origin") == own(server), r
    assert "POST" in r.header("access-control-allow-methods", ""), r
    assert "authorization" in r.header("access-control-allow-headers", "").lower(), r
    assert r.header("vary") == "Origin", r
    assert r.header("access-control-allow-credentials") is None, r
    r = server.request("OPTIONS", f"/v1/rooms/{room}/messages", headers={"Origin": EVIL, **ask})
    assert r.status == 403, r
    assert r.header("access-control-allow-origin") is None, r
    # A plain answer to an allowed origin echoes it, never `*`.
    r = server.request("GET", f"/v1/rooms/{room}/messages",
                       headers={"Origin": own(server), "Authorization": f"Bearer {server.token('ann')}"})
    assert r.status == 200 and r.header("access-control-allow-origin") == own(server), r
    assert r.header("vary") == "Origin", r


def test_allowed_origins_setting(start_server):
    s = start_server("--allowed-origins", "https://app.example, http://localhost:3000")
    s.ws("ann", headers={"Origin": "https://app.example"}).close()
    s.ws("ann", headers={"Origin": "http://localhost:3000"}).close()
    s.ws("ann", headers={"Origin": own(s)}).close()
    assert refused_status(s, headers={"Origin": "https://app.example.evil"}) == 403
    r = s.request("OPTIONS", "/v1/rooms/x/messages",
                  headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert r.status == 204 and r.header("access-control-allow-origin") == "https://app.example", r
    anyone = start_server("--allowed-origins", "*")
    anyone.ws("ann", headers={"Origin": "https://whoever.test"}).close()
    assert refused_status(anyone, headers={"Origin": "null"}) == 403


@pytest.mark.parametrize("value", ["app.example", "https://a.example/path", "ftp://a.example", "https://a b"])
def test_bad_allowed_origins_exit_2(roomcast_bin, tmp_path, value):
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path), "--allowed-origins", value])
    assert_config_error(r, "allowed-origins")


def test_page_headers(server):
    r = server.request("GET", "/")
    assert r.status == 200, r
    csp = r.header("content-security-policy", "")
    for part in ["default-src 'none'", "frame-ancestors 'none'", "connect-src 'self'", "base-uri 'none'"]:
        assert part in csp, csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
    assert "script-src 'sha256-" in csp, csp
    assert r.header("x-content-type-options") == "nosniff", r
    assert r.header("referrer-policy") == "no-referrer", r
    assert r.header("x-frame-options") == "DENY", r


def test_auth_replies_are_not_stored(server):
    r = server.request("POST", "/v1/auth/login", body=b"{}", headers={"Content-Type": "application/json"})
    assert r.header("cache-control") == "no-store", r
    assert r.header("x-content-type-options") == "nosniff", r
