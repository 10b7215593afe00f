"""Who may open /v1/ws: tokens, anonymous mode, subprotocols, audience/issuer, expiry."""

import base64
import os
import time
import urllib.parse

import pytest

from helpers import mint_token, sign_jwt


def upgrade_status(server, path="/v1/ws", headers=None, body=False) -> tuple:
    """Sends a WebSocket upgrade by hand; returns (status, response), with
    the body of a refusal when `body`."""
    c = server.http()
    try:
        hdrs = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
        hdrs.update(headers or {})
        c.send(c.build("GET", path, headers=hdrs))
        r = c.read_response(head_only=not body)
        assert r is not None, "closed without a response"
        return r.status, r
    finally:
        c.close()


def test_no_token_401(server):
    status, r = upgrade_status(server)
    assert status == 401, r


def test_bad_tokens_401(server):
    for tok in ["garbage", mint_token("ann", secret="other"), mint_token("ann", ttl=-3600)]:
        status, r = upgrade_status(server, headers={"Authorization": f"Bearer {tok}"})
        assert status == 401, (tok, r)
        status, r = upgrade_status(server, path=f"/v1/ws?access_token={tok}")
        assert status == 401, (tok, r)


def test_token_without_sub_401(server):
    now = int(time.time())
    tok = sign_jwt({"exp": now + 3600, "iat": now})
    status, r = upgrade_status(server, headers={"Authorization": f"Bearer {tok}"})
    assert status == 401, r


def test_token_alg_none_401(server):
    now = int(time.time())
    tok = sign_jwt({"sub": "ann", "exp": now + 3600}, alg="none")
    unsigned = tok.rsplit(".", 1)[0] + "."
    for t in (tok, unsigned):
        status, r = upgrade_status(server, headers={"Authorization": f"Bearer {t}"})
        assert status == 401, r


def test_header_token(server, room):
    c = server.ws("ann")
    c.join(room)
    ack = c.call("send", room=room, body="hi")
    assert ack["op"] == "ack"
    m = c.wait(op="msg", room=room)
    assert m["from"] == "ann"
    c.close()


def test_query_token(server, room):
    tok = mint_token("query-user")
    c = server.ws(None, query="access_token=" + urllib.parse.quote(tok))
    c.join(room)
    c.call("send", room=room, body="hi")
    assert c.wait(op="msg", room=room)["from"] == "query-user"
    c.close()


def test_anonymous(start_server, room):
    srv = start_server("--anonymous")
    c = srv.ws(None, query="user=guest-7")
    c.join(room)
    c.call("send", room=room, body="hi")
    assert c.wait(op="msg", room=room)["from"] == "guest-7"
    c.close()
    # Without a user parameter the server makes one up.
    d = srv.ws(None)
    d.join(room)
    d.call("send", room=room, body="hi")
    who = d.wait(op="msg", room=room)["from"]
    assert isinstance(who, str) and who, who
    d.close()
    # A token is still honoured in anonymous mode.
    e = srv.ws("tok-user")
    e.join(room)
    e.call("send", room=room, body="hi")
    assert e.wait(op="msg", room=room)["from"] == "tok-user"
    e.close()


def test_not_anonymous_by_default_even_with_user_param(server):
    status, r = upgrade_status(server, path="/v1/ws?user=sneaky")
    assert status == 401, r


def test_subprotocol_echoed(server):
    c = server.ws("ann", subprotocols=["roomcast.v1"])
    assert c.subprotocol == "roomcast.v1"
    assert c.call("ping")["op"] == "pong"
    c.close()
    c = server.ws("ann", subprotocols=["chat", "roomcast.v1"])
    assert c.subprotocol == "roomcast.v1"
    c.close()
    c = server.ws("ann")
    assert c.subprotocol is None
    c.close()


def test_only_other_subprotocols_400(server):
    status, r = upgrade_status(
        server,
        headers={"Authorization": f"Bearer {mint_token('ann')}", "Sec-WebSocket-Protocol": "chat, superchat"},
    )
    assert status == 400, r


def test_bad_upgrade_requests(server):
    tok = {"Authorization": f"Bearer {mint_token('ann')}"}
    status, r = upgrade_status(server, headers={**tok, "Sec-WebSocket-Version": "8"})
    assert status in (400, 426), r
    status, r = upgrade_status(server, headers={**tok, "Sec-WebSocket-Key": ""})
    assert status == 400, r
    status, r = upgrade_status(server, path="/v1/nowhere", headers=tok)
    assert status == 404, r


def test_echo_only_with_flag(server):
    status, r = upgrade_status(server, path="/v1/echo", headers={"Authorization": f"Bearer {mint_token('a')}"})
    assert status == 404, r


def test_audience_and_issuer(start_server, room):
    srv = start_server("--jwt-audience", "rc-aud", "--jwt-issuer", "rc-iss")
    good = mint_token("ann", aud="rc-aud", iss="rc-iss")
    c = srv.ws(None, token=good)
    assert c.call("ping")["op"] == "pong"
    c.close()
    for bad in [
        mint_token("ann", aud="other", iss="rc-iss"),
        mint_token("ann", aud="rc-aud", iss="other"),
        mint_token("ann", iss="rc-iss"),
        mint_token("ann", aud="rc-aud"),
    ]:
        status, r = upgrade_status(srv, headers={"Authorization": f"Bearer {bad}"})
        assert status == 401, r
    # The HTTP endpoints check the same claims.
    r = srv.request("POST", f"/v1/rooms/{room}/messages", body={"body": 1},
                    headers={"Authorization": f"Bearer {mint_token('ann', aud='other', iss='rc-iss')}"})
    assert r.status == 401, r
    r = srv.request("POST", f"/v1/rooms/{room}/messages", body={"body": 1},
                    headers={"Authorization": f"Bearer {good}"})
    assert r.status == 201, r


@pytest.mark.timeout(30)
def test_token_expiry_closes_4001(start_server, room):
    # The close comes at exp + leeway: a short leeway keeps the test short.
    server = start_server("--jwt-leeway", "1s")
    c = server.ws(None, token=mint_token("short", ttl=2))
    c.join(room)
    t0 = time.monotonic()
    code, reason, _ = c.closed(timeout=12)
    elapsed = time.monotonic() - t0
    assert code == 4001, (code, reason)
    # Expiry is a deadline of its own: not left to the next ping or idle check.
    assert elapsed <= 6, f"closed {elapsed:.1f}s after a 2 s token with a 1 s leeway"


# The token as a `bearer.<jwt>` subprotocol entry beside roomcast.v1: the way
# a browser keeps it out of the URL (it cannot set headers on a WebSocket).


def test_bearer_subprotocol(server, room):
    tok = mint_token("bearer-user")
    c = server.ws(None, subprotocols=["roomcast.v1", f"bearer.{tok}"])
    # Only roomcast.v1 is echoed, never the bearer entry.
    assert c.subprotocol == "roomcast.v1"
    c.join(room)
    c.call("send", room=room, body="hi")
    assert c.wait(op="msg", room=room)["from"] == "bearer-user"
    c.close()
    # In any order.
    c = server.ws(None, subprotocols=[f"bearer.{tok}", "roomcast.v1"])
    assert c.subprotocol == "roomcast.v1"
    c.close()
    # The answer's head carries no trace of the token.
    status, r = upgrade_status(server, headers={"Sec-WebSocket-Protocol": f"roomcast.v1, bearer.{tok}"})
    assert status == 101, r
    assert r.headers.get("sec-websocket-protocol") == "roomcast.v1", r
    assert tok not in str(r.headers), r
    # And the server prints nothing of it either.
    assert tok not in server.output()


def test_bad_bearer_subprotocol_401(server):
    for tok in ["garbage", mint_token("ann", secret="other"), mint_token("ann", ttl=-3600)]:
        status, r = upgrade_status(server, headers={"Sec-WebSocket-Protocol": f"roomcast.v1, bearer.{tok}"})
        assert status == 401, (tok, r)


def test_bearer_subprotocol_needs_roomcast_v1(server):
    # A browser that offered subprotocols fails a handshake that picks none,
    # so a bearer entry alone is refused rather than accepted without one.
    tok = mint_token("ann")
    for offer in [f"bearer.{tok}", f"chat, bearer.{tok}"]:
        status, r = upgrade_status(server, headers={"Sec-WebSocket-Protocol": offer}, body=True)
        assert status == 400, (offer, r)
        assert "roomcast.v1" in r.json()["error"]["message"], r


def test_bearer_subprotocol_beside_another_token_400(server):
    # Two credentials might name two users: refused as ambiguous, whichever
    # the other is, even when both are good and the same.
    tok = mint_token("ann")
    proto = {"Sec-WebSocket-Protocol": f"roomcast.v1, bearer.{tok}"}
    status, r = upgrade_status(server, headers={**proto, "Authorization": f"Bearer {tok}"}, body=True)
    assert status == 400, r
    assert r.json()["error"]["code"] == "bad_request", r
    status, r = upgrade_status(server, path=f"/v1/ws?access_token={tok}", headers=proto)
    assert status == 400, r


def test_malformed_bearer_subprotocols_400(server):
    a, b = mint_token("ann"), mint_token("bob")
    for offer in ["roomcast.v1, bearer.", f"roomcast.v1, bearer.{a}, bearer.{b}"]:
        status, r = upgrade_status(server, headers={"Sec-WebSocket-Protocol": offer})
        assert status == 400, (offer, r)
