"""roomcast protocol v1 on uWebSockets, through PyPI's `socketify`.

A baseline to measure roomcast against with the same load generator: the same
endpoints (`/v1/ws`, `/healthz`), JSON ops and authentication. Fan-out is
uWebSockets' own C++ pub/sub: every room is a topic, members are subscribed,
and a message is serialised once in Python and handed to `app.publish`, so the
per-member work happens in C++. Python runs once per client message (parse,
validate, assign seq, serialise), never per delivery.

Event loop: socketify's `App.run()` drives libuv from asyncio with
`run_nowait()` polling (`Loop._keep_alive` reschedules itself with
`call_soon`, relaxing to a 10 ms sleep only after long idleness), which keeps a
core busy and would spoil CPU-time figures. This server uses no coroutine
handlers, so it needs no asyncio at all and runs libuv's own blocking loop
instead: `app.loop.uv_loop.run()`, i.e. `uv_run(UV_RUN_DEFAULT)` through
socketify's `socketify_loop_run(loop, SOCKETIFY_RUN_DEFAULT)`, which sleeps in
epoll_wait until a socket or uSockets' timer is ready. An idle server uses ~0%
CPU. Because Python signal handlers only run when the interpreter gets control
(never while blocked inside libuv), SIGINT and SIGTERM are reset to their
default action: the process ends at once.

Single-threaded by design (one uWS app per thread, and pub/sub does not span
processes); `--threads` is accepted for a uniform command line and must be 1.

Usage:
    ROOMCAST_JWT_SECRET=s python server.py --listen 127.0.0.1:9002 [--anonymous]
"""

import argparse
import base64
import collections
import hashlib
import hmac
import itertools
import json
import os
import signal
import sys
import time

from socketify import App, AppListenOptions, OpCode

SUBPROTOCOL = "roomcast.v1"
MAX_MESSAGE_BYTES = 65536
MAX_REF_BYTES = 64
MAX_ID_BYTES = 64
MAX_ROOM_BYTES = 128
TAIL = 1024  # messages kept per room (roomcast's default)
MAX_REPLAY = 1000
DEDUP_WINDOW_MS = 3600 * 1000
# Outbound bytes buffered per connection before it is closed as a slow
# consumer (roomcast's default cap). Without closing, uWS would drop published
# messages for that member, leaving gaps.
MAX_BACKPRESSURE = 4 * 1024 * 1024
JWT_LEEWAY_S = 2
ROOM_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_anon = itertools.count(1)


def now_ms():
    return int(time.time() * 1000)


# --------------------------------------------------------------------- JWT

def _b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_hs256(token, secret):
    """The `sub` of a valid HS256 token, else raises ValueError."""
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url(head_b64))
        signing_input = (head_b64 + "." + claims_b64).encode()
        sig = _b64url(sig_b64)
    except Exception:
        raise ValueError("malformed token")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise ValueError("only HS256 tokens are accepted")
    want = hmac.new(secret, signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig):
        raise ValueError("bad signature")
    try:
        claims = json.loads(_b64url(claims_b64))
    except Exception:
        raise ValueError("malformed claims")
    if not isinstance(claims, dict):
        raise ValueError("malformed claims")
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)):
        raise ValueError("missing exp")
    if exp + JWT_LEEWAY_S < now:
        raise ValueError("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and nbf - JWT_LEEWAY_S > now:
        raise ValueError("token not yet valid")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ValueError("missing sub")
    return sub


# ------------------------------------------------------------------- rooms

class Room:
    __slots__ = ("name", "last_seq", "last_ts", "tail", "users", "dedup", "dedup_order")

    def __init__(self, name):
        self.name = name
        self.last_seq = 0
        self.last_ts = 0
        # (seq, item dict without op, msg JSON text)
        self.tail = collections.deque(maxlen=TAIL)
        self.users = {}  # user -> [connections, since]
        self.dedup = {}  # (user, id) -> (seq, ts)
        self.dedup_order = collections.deque()  # (expiry, user, id)

    def find_dup(self, user, mid, now):
        order = self.dedup_order
        while order and order[0][0] <= now:
            _, u, i = order.popleft()
            self.dedup.pop((u, i), None)
        return self.dedup.get((user, mid))

    def replay(self, since):
        if since >= self.last_seq:
            return True, []
        first = self.last_seq + 1 - len(self.tail)
        if self.last_seq - since > MAX_REPLAY or since + 1 < first:
            return False, []
        return True, [t[2] for t in itertools.islice(self.tail, since + 1 - first, None)]

    def history(self, before, after, limit):
        first = self.last_seq + 1 - len(self.tail)
        lo = first if after is None else max(after + 1, first)
        hi = self.last_seq + 1 if before is None else min(before, self.last_seq + 1)
        if lo >= hi:
            return [], False
        if after is not None:
            end = min(hi, lo + limit)
            page = itertools.islice(self.tail, lo - first, end - first)
            return [t[1] for t in page], end < hi
        start = max(lo, hi - limit)
        page = itertools.islice(self.tail, start - first, hi - first)
        return [t[1] for t in page], start > lo


class Conn:
    """What uWS keeps for us per connection (its user data)."""
    __slots__ = ("user", "rooms")

    def __init__(self, user):
        self.user = user
        self.rooms = set()


rooms = {}


def room_of(name):
    r = rooms.get(name)
    if r is None:
        r = rooms[name] = Room(name)
    return r


# ---------------------------------------------------------------- protocol

class BadRequest(Exception):
    pass


def reply(op, ref, **fields):
    d = {"op": op}
    if ref is not None:
        d["ref"] = ref
    d.update(fields)
    return _dumps(d)


def error(ref, code, message):
    return reply("error", ref, code=code, message=message)


def opt_seq(m, key):
    v = m.get(key)
    if v is None:
        return None
    if type(v) is not int or v < 0:
        raise BadRequest(key + " is a seq (a non-negative integer)")
    return v


def need_room(m):
    room = m.get("room")
    if (
        type(room) is not str
        or not room
        or len(room.encode()) > MAX_ROOM_BYTES
        or not ROOM_CHARS.issuperset(room)
    ):
        raise BadRequest("room names are 1 to 128 bytes of [A-Za-z0-9_.:-]")
    return room


def take_ref(m):
    ref = m.get("ref")
    if ref is None:
        return None
    if type(ref) is str and len(ref.encode()) <= MAX_REF_BYTES:
        return ref
    if type(ref) is int:
        return ref
    raise BadRequest("ref is a string of at most 64 bytes or an integer")


def leave_room(app, conn, name):
    r = rooms.get(name)
    if r is None:
        return
    p = r.users.get(conn.user)
    if p is None:
        return
    p[0] -= 1
    if p[0] <= 0:
        del r.users[conn.user]
        app.publish(name, reply("presence_diff", None, room=name, joins=[], leaves=[conn.user]), OpCode.TEXT)


def on_message(app, ws, data, opcode):
    if opcode != OpCode.TEXT:
        ws.send(error(None, "bad_request", "binary frames are not spoken here"), OpCode.TEXT)
        return
    conn = ws.get_user_data()
    ref = None
    try:
        m = json.loads(data)
        if type(m) is not dict:
            raise BadRequest("a message is one JSON object")
        ref = take_ref(m)
        op = m.get("op")
        if op == "ping":
            ws.send(reply("pong", ref), OpCode.TEXT)
        elif op == "send":
            room = need_room(m)
            if "body" not in m:
                raise BadRequest("send needs a body")
            mid = m.get("id")
            if mid is not None and (type(mid) is not str or len(mid.encode()) > MAX_ID_BYTES):
                raise BadRequest("id is a string of at most 64 bytes")
            r = room_of(room)
            now = now_ms()
            if mid is not None:
                dup = r.find_dup(conn.user, mid, now)
                if dup is not None:
                    ws.send(_ack(ref, room, dup[0], dup[1], mid), OpCode.TEXT)
                    return
            r.last_seq += 1
            r.last_ts = max(r.last_ts, now)
            seq, ts = r.last_seq, r.last_ts
            item = {"room": room, "seq": seq, "ts": ts, "from": conn.user, "body": m["body"]}
            if mid is not None:
                item["id"] = mid
                r.dedup[(conn.user, mid)] = (seq, ts)
                r.dedup_order.append((now + DEDUP_WINDOW_MS, conn.user, mid))
            text = _dumps({"op": "msg", **item})
            r.tail.append((seq, item, text))
            app.publish(room, text, OpCode.TEXT)
            ws.send(_ack(ref, room, seq, ts, mid), OpCode.TEXT)
        elif op == "join":
            room = need_room(m)
            since = opt_seq(m, "since")
            r = room_of(room)
            if room not in conn.rooms:
                conn.rooms.add(room)
                p = r.users.get(conn.user)
                if p is None:
                    r.users[conn.user] = [1, now_ms()]
                    # Published before this socket subscribes, so only the
                    # other members hear of the arrival.
                    app.publish(room, reply("presence_diff", None, room=room, joins=[conn.user], leaves=[]), OpCode.TEXT)
                else:
                    p[0] += 1
                ws.subscribe(room)
            if since is None:
                ws.send(reply("joined", ref, room=room, seq=r.last_seq), OpCode.TEXT)
            else:
                ok, frames = r.replay(since)
                ws.send(reply("joined", ref, room=room, seq=r.last_seq, recovered=ok), OpCode.TEXT)
                for f in frames:
                    ws.send(f, OpCode.TEXT)
        elif op == "leave":
            room = need_room(m)
            if room not in conn.rooms:
                ws.send(error(ref, "not_joined", "not a member of this room"), OpCode.TEXT)
                return
            conn.rooms.discard(room)
            ws.unsubscribe(room)
            leave_room(app, conn, room)
            ws.send(reply("left", ref, room=room), OpCode.TEXT)
        elif op == "history":
            room = need_room(m)
            before = opt_seq(m, "before")
            after = opt_seq(m, "after")
            limit = m.get("limit")
            if limit is None:
                limit = 50
            elif type(limit) is not int:
                raise BadRequest("limit is an integer")
            limit = min(max(limit, 1), 1000)
            r = rooms.get(room)
            page, more = r.history(before, after, limit) if r else ([], False)
            ws.send(reply("history", ref, room=room, messages=page, more=more), OpCode.TEXT)
        elif op == "presence":
            room = need_room(m)
            r = rooms.get(room)
            members = [{"user": u, "since": p[1]} for u, p in r.users.items()] if r else []
            ws.send(reply("presence", ref, room=room, members=members), OpCode.TEXT)
        else:
            raise BadRequest("unknown op")
    except BadRequest as e:
        ws.send(error(ref, "bad_request", str(e)), OpCode.TEXT)
    except ValueError as e:  # JSON syntax
        ws.send(error(None, "bad_request", str(e)), OpCode.TEXT)


def _ack(ref, room, seq, ts, mid):
    if mid is None:
        return reply("ack", ref, room=room, seq=seq, ts=ts)
    return reply("ack", ref, room=room, seq=seq, ts=ts, id=mid)


# --------------------------------------------------------------------- HTTP

def http_error(res, status, code, message):
    res.write_status(status)
    res.write_header("Content-Type", "application/json")
    res.end(_dumps({"error": {"code": code, "message": message}}))


def make_upgrade(secret, anonymous):
    def upgrade(res, req, context):
        # Everything is read from `req` synchronously: uWS frees it when this
        # handler returns.
        key = req.get_header("sec-websocket-key")
        protocols = req.get_header("sec-websocket-protocol")
        extensions = req.get_header("sec-websocket-extensions")
        offered = [p.strip() for p in protocols.split(",")] if protocols else []
        if offered and SUBPROTOCOL not in offered:
            return http_error(res, 400, "bad_request", "the only subprotocol spoken here is roomcast.v1")
        token = None
        auth = req.get_header("authorization")
        if auth and auth.startswith("Bearer "):
            token = auth[7:].strip()
        if token is None:
            token = req.get_query("access_token")
        if token:
            if secret is None:
                return http_error(res, 401, "unauthorized", "no secret configured")
            try:
                user = verify_hs256(token, secret)
            except ValueError as e:
                return http_error(res, 401, "unauthorized", str(e))
        elif anonymous:
            user = req.get_query("user")
            if user is None:
                user = "anon-%d" % next(_anon)
            elif not user or len(user.encode()) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in user):
                return http_error(res, 400, "bad_request", "user ids are 1 to 128 bytes without control characters")
        else:
            return http_error(res, 401, "unauthorized", "a token is required (Authorization: Bearer, or access_token)")
        res.upgrade(key, SUBPROTOCOL if offered else "", extensions, context, Conn(user))

    return upgrade


def main():
    ap = argparse.ArgumentParser(description="roomcast protocol v1 on uWebSockets (socketify)")
    ap.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT")
    ap.add_argument("--anonymous", action="store_true", help="accept connections without a token")
    ap.add_argument("--threads", type=int, default=1, help="must be 1: one uWS loop, one thread")
    args = ap.parse_args()
    if args.threads != 1:
        sys.exit("baseline-socketify: only --threads 1 is supported")
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    secret = os.environ.get("ROOMCAST_JWT_SECRET") or None
    if secret is None and not args.anonymous:
        sys.exit("baseline-socketify: set ROOMCAST_JWT_SECRET (or pass --anonymous)")
    secret = secret.encode() if secret else None

    app = App()

    def close(ws, code, message):
        conn = ws.get_user_data()
        if conn is None:
            return
        for name in conn.rooms:
            leave_room(app, conn, name)
        conn.rooms.clear()

    app.ws(
        "/v1/ws",
        {
            "compression": 0,
            "max_payload_length": MAX_MESSAGE_BYTES,
            "idle_timeout": 0,  # no idle timeout, like the axum baseline
            "max_backpressure": MAX_BACKPRESSURE,
            "close_on_backpressure_limit": True,
            "upgrade": make_upgrade(secret, args.anonymous),
            "message": lambda ws, data, opcode: on_message(app, ws, data, opcode),
            "close": close,
        },
    )
    app.get("/healthz", lambda res, req: res.end("ok"))
    app.any("/*", lambda res, req: http_error(res, 404, "not_found", "no such endpoint"))

    listening = []

    def on_listen(config):
        listening.append(config)
        print("baseline-socketify listening on http://%s:%d" % (host, config.port), flush=True)

    app.listen(AppListenOptions(port=int(port), host=host), on_listen)
    if not listening:
        sys.exit("baseline-socketify: cannot listen on %s" % args.listen)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The blocking libuv loop; see the module comment for why not app.run().
    app.loop.uv_loop.run()


if __name__ == "__main__":
    main()
