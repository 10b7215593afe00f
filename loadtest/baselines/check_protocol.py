#!/usr/bin/env python3
"""Protocol v1 conformance check for roomcast and its baselines.

Usage:
    python check_protocol.py ws://127.0.0.1:PORT/v1/ws SECRET

SECRET is the server's ROOMCAST_JWT_SECRET; tokens are minted here (HS256).
Needs the `websockets` package (pip install websockets). Exits 0 when every
check passes, 1 otherwise, printing one line per check.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import websockets
from websockets.asyncio.client import connect

TIMEOUT = 3.0
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(secret, sub, ttl=3600):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(secret.encode(), (head + "." + claims).encode(), hashlib.sha256).digest()
    return head + "." + claims + "." + b64url(sig)


class Client:
    def __init__(self, ws, name):
        self.ws = ws
        self.name = name

    async def send(self, **m):
        await self.ws.send(json.dumps(m))

    async def recv(self):
        return json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))

    async def recv_until(self, pred, what, limit=50):
        """The first message matching pred; others before it are skipped."""
        for _ in range(limit):
            try:
                m = await self.recv()
            except asyncio.TimeoutError:
                check(False, "%s: %s (timed out)" % (self.name, what))
                return None
            if pred(m):
                return m
        check(False, "%s: %s (not among %d messages)" % (self.name, what, limit))
        return None

    async def roundtrip(self, ref):
        """Sends a ping and returns every message that arrived before its pong."""
        await self.send(op="ping", ref=ref)
        seen = []
        while True:
            m = await self.recv()
            if m.get("op") == "pong" and m.get("ref") == ref:
                return seen
            seen.append(m)


async def open_client(url, name, **kw):
    ws = await connect(url, subprotocols=["roomcast.v1"], **kw)
    return Client(ws, name)


async def run(url, secret):
    room = "check-" + uuid.uuid4().hex[:12]
    base = url.split("/v1/ws")[0].replace("ws://", "http://").replace("wss://", "https://")

    # healthz
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=TIMEOUT) as r:
            check(r.status == 200 and r.read().strip() == b"ok", "GET /healthz is 200 ok")
    except Exception as e:
        check(False, "GET /healthz (%s)" % e)

    # refused upgrades
    try:
        ws = await connect(url + "?access_token=not.a.token")
        await ws.close()
        check(False, "a bad token is refused with 401")
    except websockets.exceptions.InvalidStatus as e:
        check(e.response.status_code == 401, "a bad token is refused with 401 (got %d)" % e.response.status_code)
    try:
        ws = await connect(url, additional_headers={"Authorization": "Bearer " + token(secret, "x")},
                           subprotocols=["other.v9"])
        await ws.close()
        check(False, "a foreign subprotocol alone is refused with 400")
    except websockets.exceptions.InvalidStatus as e:
        check(e.response.status_code == 400, "a foreign subprotocol alone is refused with 400 (got %d)"
              % e.response.status_code)
    except websockets.exceptions.InvalidHandshake as e:
        check(False, "a foreign subprotocol alone is refused with 400 (%s)" % e)

    # ann by query token, bo by bearer header
    ann = await open_client(url + "?access_token=" + token(secret, "ann"), "ann")
    check(ann.ws.subprotocol == "roomcast.v1", "subprotocol roomcast.v1 is echoed")
    bo = await open_client(url, "bo", additional_headers={"Authorization": "Bearer " + token(secret, "bo")})

    await ann.send(op="ping", ref="p1")
    m = await ann.recv()
    check(m == {"op": "pong", "ref": "p1"}, "ping -> pong with ref: %s" % m)

    await ann.send(op="join", room=room, ref=1)
    m = await ann.recv()
    check(m == {"op": "joined", "ref": 1, "room": room, "seq": 0}, "join -> joined seq 0: %s" % m)

    await bo.send(op="join", room=room, ref="j")
    m = await bo.recv()
    check(m.get("op") == "joined" and m.get("ref") == "j" and m.get("seq") == 0, "bo joins: %s" % m)
    m = await ann.recv_until(lambda m: m.get("op") == "presence_diff", "presence_diff on bo's join")
    if m:
        check(m == {"op": "presence_diff", "room": room, "joins": ["bo"], "leaves": []},
              "presence_diff joins [bo]: %s" % m)

    await ann.send(op="send", room=room, body={"text": "hello"}, ref="a7", id="m-1")
    got = {}
    for _ in range(2):
        m = await ann.recv()
        got[m.get("op")] = m
    ack, msg = got.get("ack"), got.get("msg")
    check(ack is not None and ack.get("ref") == "a7" and ack.get("seq") == 1 and ack.get("id") == "m-1"
          and ack.get("room") == room and isinstance(ack.get("ts"), int), "send -> ack: %s" % ack)
    check(msg is not None and msg.get("seq") == 1 and msg.get("from") == "ann"
          and msg.get("body") == {"text": "hello"} and msg.get("id") == "m-1" and "ref" not in msg,
          "sender gets its own msg: %s" % msg)
    m = await bo.recv()
    check(m.get("op") == "msg" and m.get("seq") == 1 and m.get("from") == "ann"
          and m.get("body") == {"text": "hello"} and m.get("ts") == (ack or {}).get("ts"),
          "member gets msg: %s" % m)

    # duplicate id: original ack, nothing published
    await ann.send(op="send", room=room, body={"text": "again"}, ref="a8", id="m-1")
    m = await ann.recv()
    check(m.get("op") == "ack" and m.get("seq") == 1 and m.get("ref") == "a8"
          and m.get("ts") == (ack or {}).get("ts"), "repeated id -> original ack with new ref: %s" % m)
    extra = await bo.roundtrip("d1")
    check(extra == [], "repeated id publishes nothing: %s" % extra)

    # a second message, then history and replay
    await bo.send(op="send", room=room, body=2, ref=5)
    m = await bo.recv_until(lambda m: m.get("op") == "ack", "ack for bo's send")
    check(m is not None and m.get("seq") == 2 and m.get("ref") == 5 and "id" not in m, "second send seq 2: %s" % m)
    m = await ann.recv_until(lambda m: m.get("op") == "msg", "msg 2 at ann")
    check(m is not None and m.get("seq") == 2 and m.get("body") == 2, "ann gets msg 2: %s" % m)
    await bo.roundtrip("d2")  # drain bo's own msg 2

    await ann.send(op="history", room=room, ref="h")
    m = await ann.recv()
    msgs = m.get("messages", [])
    check(m.get("op") == "history" and m.get("ref") == "h" and m.get("more") is False
          and [x.get("seq") for x in msgs] == [1, 2] and all("op" not in x for x in msgs)
          and msgs[0].get("body") == {"text": "hello"} and msgs[0].get("from") == "ann",
          "history -> both messages ascending: %s" % m)
    await ann.send(op="history", room=room, limit=1, ref="h2")
    m = await ann.recv()
    check([x.get("seq") for x in m.get("messages", [])] == [2] and m.get("more") is True,
          "history limit 1 -> newest, more: %s" % m)
    await ann.send(op="history", room=room, after=1, ref="h3")
    m = await ann.recv()
    check([x.get("seq") for x in m.get("messages", [])] == [2] and m.get("more") is False,
          "history after 1: %s" % m)

    cy = await open_client(url + "?access_token=" + token(secret, "cy"), "cy")
    await cy.send(op="join", room=room, since=0, ref="s")
    m = await cy.recv()
    check(m == {"op": "joined", "ref": "s", "room": room, "seq": 2, "recovered": True},
          "join since 0 -> joined recovered: %s" % m)
    replay = [await cy.recv(), await cy.recv()]
    check([x.get("seq") for x in replay] == [1, 2] and all(x.get("op") == "msg" for x in replay),
          "join since 0 replays 1 and 2: %s" % replay)
    for c in (ann, bo):
        m = await c.recv_until(lambda m: m.get("op") == "presence_diff", "presence_diff on cy's join")
        check(m is not None and m.get("joins") == ["cy"], "%s sees cy join" % c.name)

    await ann.send(op="presence", room=room, ref="pr")
    m = await ann.recv()
    users = sorted(x.get("user") for x in m.get("members", []))
    check(m.get("op") == "presence" and m.get("ref") == "pr" and users == ["ann", "bo", "cy"]
          and all(isinstance(x.get("since"), int) for x in m.get("members", [])),
          "presence lists ann, bo, cy: %s" % m)

    # errors
    await ann.send(op="join", room="bad room!", ref="e1")
    m = await ann.recv()
    check(m.get("op") == "error" and m.get("code") == "bad_request" and m.get("ref") == "e1",
          "bad room name -> bad_request: %s" % m)
    await ann.send(op="leave", room="never-joined-" + room, ref="e2")
    m = await ann.recv()
    check(m.get("op") == "error" and m.get("code") == "not_joined" and m.get("ref") == "e2",
          "leave of a room not joined -> not_joined: %s" % m)
    await ann.ws.send("{not json")
    m = await ann.recv()
    check(m.get("op") == "error" and m.get("code") == "bad_request", "invalid JSON -> bad_request: %s" % m)
    await ann.ws.send(b"\x01\x02")
    m = await ann.recv()
    check(m.get("op") == "error" and m.get("code") == "bad_request", "binary frame -> bad_request: %s" % m)
    await ann.send(op="ping", ref="alive")
    m = await ann.recv()
    check(m == {"op": "pong", "ref": "alive"}, "connection stays open after errors")

    # leave, then disconnect
    await bo.send(op="leave", room=room, ref="l")
    m = await bo.recv_until(lambda m: m.get("op") == "left", "left")
    check(m == {"op": "left", "ref": "l", "room": room}, "leave -> left: %s" % m)
    m = await ann.recv_until(lambda m: m.get("op") == "presence_diff", "presence_diff on bo's leave")
    check(m == {"op": "presence_diff", "room": room, "joins": [], "leaves": ["bo"]},
          "presence_diff leaves [bo]: %s" % m)
    await cy.ws.close()
    m = await ann.recv_until(lambda m: m.get("op") == "presence_diff", "presence_diff on cy's disconnect")
    check(m is not None and m.get("leaves") == ["cy"], "disconnect -> presence_diff leaves [cy]: %s" % m)

    for c in (ann, bo):
        await c.ws.close()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        asyncio.run(run(sys.argv[1], sys.argv[2]))
    except Exception as e:
        check(False, "unexpected %s: %s" % (type(e).__name__, e))
    print("%d failure(s)" % len(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
