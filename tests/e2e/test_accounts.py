"""Accounts end to end: register, login, refresh and logout over HTTP with urllib;
refresh-token reuse; failed-login limits kept across a restart; unknown-user timing;
a login storm next to connected WebSocket clients."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request

from helpers import HOST

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "loadtest"))

import login_storm  # noqa: E402


def call(srv, path, obj=None, method="POST", ctype="application/json", raw=None):
    """(status, headers with lower-case names, JSON body or None) via urllib."""
    data = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
    req = urllib.request.Request(srv.http_base + path, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, headers, body = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, e.headers, e.read()
    h = {k.lower(): v for k, v in headers.items()}
    return status, h, (json.loads(body) if body else None)


def from_addr(srv, source, path, obj):
    """A POST from another loopback address (Linux routes all of 127/8 locally)."""
    return login_storm.post(HOST, srv.port, path, obj, source=source)


def creds(u, p):
    return {"username": u, "password": p}


def assert_error(resp, status, code):
    s, h, doc = resp
    assert s == status, resp
    assert h.get("content-type", "").startswith("application/json"), resp
    assert doc["error"]["code"] == code, resp
    assert h.get("cache-control") == "no-store", resp


def test_register_login_refresh_logout(start_server):
    srv = start_server()
    s, h, doc = call(srv, "/v1/auth/register", creds("ann", "a good password"))
    assert s == 201, doc
    assert h["cache-control"] == "no-store"
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 900
    assert set(doc) >= {"access_token", "refresh_token"}

    # The minted access token opens a WebSocket as ann.
    c = srv.ws(token=doc["access_token"])
    c.close()

    assert_error(call(srv, "/v1/auth/register", creds("ann", "another password")), 409, "conflict")
    assert_error(call(srv, "/v1/auth/register", creds("bo", "short")), 400, "bad_request")
    assert_error(call(srv, "/v1/auth/register", creds("bo", "x" * 1025)), 400, "bad_request")
    assert_error(call(srv, "/v1/auth/register", creds("a\u0007b", "a good password")), 400, "bad_request")
    assert_error(call(srv, "/v1/auth/register", raw=b"{not json"), 400, "bad_request")
    assert_error(call(srv, "/v1/auth/login", creds("ann", "a good password"), ctype="text/plain"), 400, "bad_request")
    assert_error(call(srv, "/v1/auth/login", method="GET", ctype=None), 405, "method_not_allowed")
    assert_error(call(srv, "/v1/auth/nothing", {}), 404, "not_found")

    s, _, login = call(srv, "/v1/auth/login", creds("ann", "a good password"))
    assert s == 200, login
    assert_error(call(srv, "/v1/auth/login", creds("ann", "a bad password")), 401, "unauthorized")

    s, _, r1 = call(srv, "/v1/auth/refresh", {"refresh_token": login["refresh_token"]})
    assert s == 200, r1
    assert r1["refresh_token"] != login["refresh_token"]
    srv.ws(token=r1["access_token"]).close()

    s, _, out = call(srv, "/v1/auth/logout", {"refresh_token": r1["refresh_token"]})
    assert (s, out) == (200, {"revoked": True})
    assert_error(call(srv, "/v1/auth/refresh", {"refresh_token": r1["refresh_token"]}), 401, "unauthorized")
    # The registration's own sign-in is a separate family, still alive.
    s, _, _ = call(srv, "/v1/auth/refresh", {"refresh_token": doc["refresh_token"]})
    assert s == 200


def test_refresh_token_reuse_revokes_the_family(start_server):
    srv = start_server()
    s, _, doc = call(srv, "/v1/auth/register", creds("ann", "a good password"))
    assert s == 201
    stolen = doc["refresh_token"]
    s, _, owner = call(srv, "/v1/auth/refresh", {"refresh_token": stolen})
    assert s == 200
    # The thief replays the spent token: refused, and the family is revoked ...
    resp = call(srv, "/v1/auth/refresh", {"refresh_token": stolen})
    assert_error(resp, 401, "unauthorized")
    assert "revoked" in resp[2]["error"]["message"]
    # ... so the token it was rotated to fails as well.
    assert_error(call(srv, "/v1/auth/refresh", {"refresh_token": owner["refresh_token"]}), 401, "unauthorized")


def test_eleventh_failed_login_is_refused_after_a_restart(start_server, tmp_path):
    data = tmp_path / "data"
    srv = start_server(data_dir=data)
    assert call(srv, "/v1/auth/register", creds("ann", "a good password"))[0] == 201
    assert call(srv, "/v1/auth/register", creds("bob", "a good password"))[0] == 201
    for i in range(10):
        s, _, doc = from_addr(srv, "127.0.0.2", "/v1/auth/login", creds("ann", f"wrong password {i}"))
        assert s == 401, (i, doc)
    assert srv.stop() == 0

    srv = start_server(data_dir=data)
    # The right password, from an address that never failed: the account's count holds.
    s, h, doc = from_addr(srv, "127.0.0.3", "/v1/auth/login", creds("ann", "a good password"))
    assert s == 429, doc
    assert doc["error"]["code"] == "rate_limited"
    assert 1 <= int(h["retry-after"]) <= 900, h
    # The failing address is out too, for any account.
    s, _, _ = from_addr(srv, "127.0.0.2", "/v1/auth/login", creds("bob", "a good password"))
    assert s == 429
    # Elsewhere, other accounts are fine.
    s, _, _ = from_addr(srv, "127.0.0.3", "/v1/auth/login", creds("bob", "a good password"))
    assert s == 200


def test_unknown_user_and_wrong_password_look_alike(start_server):
    srv = start_server()
    assert call(srv, "/v1/auth/register", creds("ann", "a good password"))[0] == 201
    times = {"unknown": [], "wrong": []}
    bodies = {"unknown": set(), "wrong": set()}
    # Interleaved, from addresses of their own, fewer than ten each so no limit is hit.
    for i in range(8):
        for kind, user, src in (("unknown", f"nobody{i}", "127.0.0.4"), ("wrong", "ann", "127.0.0.5")):
            t = time.perf_counter()
            s, h, doc = from_addr(srv, src, "/v1/auth/login", creds(user, "not the password"))
            times[kind].append(time.perf_counter() - t)
            assert s == 401, doc
            bodies[kind].add((json.dumps(doc), h.get("cache-control")))
    print(f"\nlogin median: unknown user {statistics.median(times['unknown']) * 1000:.1f} ms, "
          f"wrong password {statistics.median(times['wrong']) * 1000:.1f} ms")
    assert bodies["unknown"] == bodies["wrong"] and len(bodies["wrong"]) == 1, bodies


def test_a_login_storm_does_not_stall_websockets(start_server):
    srv = start_server("--auth-workers", "2")
    figures = login_storm.main(["--port", str(srv.port), "--serial", "3", "--parallel", "50", "--rounds", "1",
                                "--clients", "20", "--quiet-s", "1.5"])
    # Every login answered (the queue holds 64 with two workers), every ping answered.
    assert figures["codes"] == {200: 50}, figures["codes"]
    assert figures["lost"] == 0
    assert figures["pings"].get("storm"), "no pings during the storm"


def test_names_of_provider_users_cannot_be_registered(start_server):
    # `provider:subject` is what an OAuth sign-in names its users: taking one
    # in advance would let someone pass as that provider's user.
    srv = start_server()
    assert_error(call(srv, "/v1/auth/register", creds("op:alice", "a good password")), 400, "bad_request")
    s, _, doc = call(srv, "/v1/auth/passkey/register/start", {"username": "op:alice"})
    assert s == 400 and doc["error"]["code"] == "bad_request", doc
