#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

    python3 fuzz/seeds.py

Each seed is a realistic input in the format its target's header comment
describes. Files are named by content, so running this again only adds
seeds; delete a target's directory first to replace its seeds.
"""

import base64
import hashlib
import hmac
import json
import os
import random
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"fuzz-secret-0123456789abcdef"  # as in fuzz_targets/jwt.rs
OTHER = b"fuzz-secret-other-key"
FAR = 4102444800  # 2100-01-01


def write(target, seeds):
    out = os.path.join(HERE, "corpus", target)
    os.makedirs(out, exist_ok=True)
    for data in seeds:
        name = hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds")


def j(value):
    return json.dumps(value, separators=(",", ":")).encode()


# ---------------------------------------------------------------- WebSocket


def frame(payload, opcode=1, fin=True, mask=b"\x37\xfa\x21\x3d", rsv=0):
    """One client frame (masked unless mask is None)."""
    if isinstance(payload, str):
        payload = payload.encode()
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


OPS = [
    {"op": "join", "room": "lobby", "ref": 1},
    {"op": "join", "room": "lobby", "since": 0, "ref": "j2"},
    {"op": "send", "room": "lobby", "body": {"text": "hello"}, "ref": "a7", "id": "m-1"},
    {"op": "send", "room": "lobby", "body": [1, 2.5, None, True, "x"]},
    {"op": "history", "room": "lobby", "before": 10, "limit": 5, "ref": 3},
    {"op": "history", "room": "lobby", "after": 0, "limit": 1000},
    {"op": "presence", "room": "lobby", "ref": 4},
    {"op": "leave", "room": "lobby", "ref": 5},
    {"op": "ping", "ref": 6},
]


def ws_seeds():
    text = [frame(j(op)) for op in OPS]
    return [
        b"\x00" + text[0],
        b"\x03" + text[2],
        b"\xff" + b"".join(text[:4]),
        b"\x07" + frame("hel", fin=False) + frame("lo", opcode=0),
        b"\x01" + frame("a", fin=False) + frame(b"\x01", opcode=9) + frame("b", opcode=0),
        b"\x10" + frame(b"\x00\x01\xfe", opcode=2),
        b"\x02" + frame(b"ping", opcode=9) + frame(b"", opcode=10),
        b"\x05" + frame(struct.pack(">H", 1000) + b"bye", opcode=8),
        b"\x05" + frame(b"", opcode=8),
        b"\x08" + frame("x" * 200) + frame("y" * 5000),
        b"\x04" + frame("\u00e9t\u00e9".encode()[:3], fin=False) + frame("\u00e9t\u00e9".encode()[3:], opcode=0),
        b"\x04" + frame(b"\xc3\x28"),
        b"\x00" + frame("unmasked", mask=None),
        b"\x00" + frame("rsv", rsv=4),
    ]


# ---------------------------------------------------------------- HTTP


def http_seeds():
    def req(method, target, headers=(), body=b""):
        head = f"{method} {target} HTTP/1.1\r\nHost: localhost:8080\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    post = j({"body": {"text": "hi"}, "id": "m-1"})
    return [
        req("GET", "/"),
        req("GET", "/healthz"),
        req("HEAD", "/healthz"),
        req("GET", "/metrics"),
        req("GET", "/v1/rooms/lobby/messages?after=0&limit=10", [("Authorization", "Bearer abc.def.ghi")]),
        req("GET", "/v1/rooms/lobby/presence?access_token=abc"),
        req("POST", "/v1/rooms/lobby/messages", [("Content-Type", "application/json")], post),
        req("POST", "/v1/admin/backup", [("Authorization", "Bearer x")], j({"name": "b.redb"})),
        req("GET", "/v1/ws?access_token=abc.def.ghi", upgrade + [("Sec-WebSocket-Protocol", "roomcast.v1")]),
        req("GET", "/v1/ws", upgrade + [("Authorization", "Bearer abc")]),
        req("GET", "/healthz") + req("GET", "/metrics") + req("POST", "/v1/rooms/a/messages", [], post),
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST /v1/rooms/r/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET /%2e%2e/%00?a=%zz HTTP/1.1\r\nHost: \xff\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 20 + b"\r\n",
    ]


# ---------------------------------------------------------------- messages


def proto_seeds():
    seeds = [j(op) for op in OPS]
    seeds += [
        j({"body": {"text": "hi"}}),
        j({"body": "x", "id": "m-2"}),
        b'{"op":"send","room":"r","body":' + b"[" * 70 + b"]" * 70 + b"}",
        b'{"op":"send","room":"r","body":1e400}',
        b'{"op":"send","room":"r","body":' + b"1" * 120 + b"}",
        b'{"op":"join","room":"bad room!"}',
        b'{"op":"join","room":"' + b"a" * 129 + b'"}',
        b'{"op":"send","room":"r","body":{},"ref":' + b'"' + b"r" * 65 + b'"}',
        b'{"op":"history","room":"r","before":-1,"after":18446744073709551616}',
        b'{"op":"ping","op":"ping"}',
        b'{"op":"nope"}',
        b'{"op":"send","room":"r","body":"\\ud800"}',
        b"[]",
        b"",
    ]
    return seeds


# ---------------------------------------------------------------- config


def config_seeds():
    def seed(args=(), env=(), toml=""):
        return b"\0".join(a.encode() for a in args) + b"\0\0" + b"\0".join(e.encode() for e in env) + b"\0\0" + toml.encode()

    full = "\n".join(
        [
            'listen = "127.0.0.1:0"',
            'data = "data"',
            "threads = 2",
            "anonymous = true",
            'durability = "none"',
            "max-message-bytes = \"64KiB\"",
            "max_queue_bytes = 4194304",
            'idle-timeout = "60s"',
            "ping-interval = 20",
            'request-timeout = "500ms"',
            "send-rate = 50.0",
            "send-burst = 100",
            'retain-age = "7d"',
            "retain-messages = 1000",
            "max-body-depth = 64",
            "request-rate = 0",
            "max-conns-per-ip = 0",
            'room-idle-timeout = "1m"',
            'jwt-audience = "rc"',
            "",
        ]
    )
    return [
        seed(["serve"]),
        seed(["serve", "--config", "c.toml"], toml=full),
        seed(["serve"], ["CONFIG=c.toml", "THREADS=3"], 'echo = true\nanonymous = "yes"\n'),
        seed(["serve", "--listen", "0.0.0.0:9000", "--threads", "4", "--anonymous", "--echo=false"]),
        seed(["serve", "--tls-listen", "127.0.0.1:8443", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]),
        seed(["serve", "--max-message-bytes", "1MiB", "--max-queue-bytes", "512KiB"]),
        seed(["serve", "--idle-timeout", "5s", "--ping-interval", "10s"]),
        seed(["serve", "--retain-age", "18446744073709551615d", "--dedup-window", "0ms"]),
        seed(["serve", "--send-rate", "NaN", "--send-burst", "0"]),
        seed(["serve", "--config", "c.toml"], toml="threads = -1\n[table]\nx = 1\n"),
        seed(["serve", "--config", "c.toml"], toml='max-message-bytes = "64 GiB"\nbogus = 1\n'),
        seed(["serve", "--config", "c.toml"], toml="idle_timeout = 1e9\nping_interval = '\u00e9'\n"),
        seed(["serve"], ["JWT_SECRET=s3cret", "JWT_AUDIENCE=", "DURABILITY=Immediate", "ANONYMOUS=on"]),
        seed(["token", "--sub", "ann", "--ttl", "1h", "--role", "admin"]),
        seed(["token", "--sub", "", "--ttl", "0"]),
        seed(["dev-cert", "--out-cert", "c.pem", "--out-key", "k.pem", "--name", "localhost"]),
        seed(["backup", "--out", "b.redb", "--config", "c.toml"], toml='data = "d"\n'),
        seed(["--help"]),
        seed(["serve", "--version"]),
    ]


# ---------------------------------------------------------------- records


def record_value(ts, frm, mid, body):
    v = struct.pack("<Q", ts) + struct.pack("<I", len(frm)) + frm
    v += struct.pack("<I", 0xFFFFFFFF) if mid is None else struct.pack("<I", len(mid)) + mid
    return v + body


def record_seeds():
    raw = [
        record_value(1764441600000, b"ann", b"m-1", b'{"text":"hi"}'),
        record_value(0, b"", None, b""),
        record_value(2**64 - 1, "z\u00fcrich".encode(), None, b"[1,2,3]"),
        record_value(5, b"bo", b"", b'"x"'),
        record_value(5, b"\xff\xfe", None, b""),
        struct.pack("<Q", 7) + struct.pack("<I", 100) + b"short",
        b"\x01\x02\x03",
    ]
    seeds = [b"\x00" + struct.pack("<Q", seq) + v for seq, v in zip([1, 2, 3, 2**63, 9, 4, 0], raw)]
    seeds += [b"\x01" + bytes(range(40)), b"\x01" + b"ann\x00m-1\x00{}" * 3]
    return seeds


# ---------------------------------------------------------------- tokens


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(claims, header=None, key=SECRET):
    header = header if header is not None else j({"alg": "HS256", "typ": "JWT"})
    msg = b64(header) + b"." + b64(claims)
    return msg + b"." + b64(hmac.new(key, msg, hashlib.sha256).digest())


def jwt_seeds():
    good = j({"sub": "ann", "exp": FAR})
    claims = [
        good,
        j({"sub": "ann", "exp": FAR, "aud": "roomcast-fuzz", "iss": "fuzz-issuer", "role": "admin"}),
        j({"sub": "bo", "exp": FAR, "aud": ["x", "roomcast-fuzz"], "iss": "fuzz-issuer"}),
        j({"sub": "ann", "exp": 2**64 - 1}),
        j({"sub": "ann", "exp": 1000}),
        j({"sub": "ann", "exp": FAR, "nbf": FAR - 1}),
        j({"sub": "", "exp": FAR}),
        j({"sub": "x" * 129, "exp": FAR}),
        j({"sub": "a\u0007b", "exp": FAR}),
        j({"sub": "\u00e9" * 64, "exp": FAR}),
        j({"sub": 12, "exp": FAR}),
        j({"sub": "ann", "exp": 4.1e9}),
        j({"sub": "ann", "exp": "4102444800"}),
        j({"sub": "ann"}),
        b'{"sub":"ann","exp":4102444800,"sub":"bo"}',
        b"not json",
    ]
    seeds = []
    for i, c in enumerate(claims):
        seeds.append(bytes([0x04 | (i & 3)]) + c)  # signed with the right secret
    seeds.append(b"\x0c" + good)  # signed with the wrong secret
    headers = [
        j({"alg": "HS256"}),
        j({"alg": "none"}),
        j({"alg": "HS512", "typ": "JWT"}),
        j({"alg": "HS256", "typ": "JWT", "kid": "k1", "crit": ["exp"]}),
        j({"alg": "RS256"}),
    ]
    seeds += [b"\x08" + h + b"\n" + good for h in headers]
    raw = [
        token(good),
        token(good, key=OTHER),
        token(j({"sub": "ann", "exp": 1000})),
        b64(j({"alg": "none"})) + b"." + b64(good) + b".",
        b"a.b.c",
        b"..",
        b"",
        b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.=====",
    ]
    seeds += [b"\x00" + t for t in raw]
    return seeds


# ---------------------------------------------------------------- reactor


ZERO = b"\0\0\0\0"  # the all-zero mask: the payload goes in the clear


def chunked(*pieces):
    """The conn target's framing: each piece as reads of at most 255 bytes;
    an int is a clock move of that many tenths of a second."""
    out = b""
    for p in pieces:
        if isinstance(p, int):
            out += b"\0" + bytes([p])
            continue
        while p:
            cut = min(len(p), 255)
            i = p.find(b"$TOKEN")
            if i != -1 and i < cut < i + 6:
                cut = i  # never split the placeholder
            out += bytes([cut]) + p[:cut]
            p = p[cut:]
    return out


def conn_seeds():
    ws_head = lambda target, extra="": (
        f"GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()
    up = ws_head("/v1/ws?access_token=$TOKEN")
    ops = [frame(j(op), mask=ZERO) for op in OPS]
    post = j({"body": {"text": "hi"}, "id": "m-1"})
    post_req = (
        b"POST /v1/rooms/lobby/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer $TOKEN\r\n"
        + f"Content-Length: {len(post)}\r\n\r\n".encode()
        + post
    )
    return [
        b"\x00" + chunked(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"),
        b"\x00" + chunked(b"GET /heal", b"thz HTTP/1.1\r\nHost: t\r\n\r\n"),
        b"\x00" + chunked(b"GET /healthz HTTP/1.1\r\n\r\n"),
        b"\x00" + chunked(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /metrics HTTP/1.1\r\nHost: t\r\n\r\nHEAD / HTTP/1.1\r\nHost: t\r\n\r\n"),
        b"\x00" + chunked(post_req),
        b"\x00" + chunked(b"GET /v1/rooms/lobby/messages?after=0&limit=5 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer $TOKEN\r\n\r\n"),
        b"\x00" + chunked(b"GET /v1/rooms/lobby/presence HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer bad.token.here\r\n\r\n"),
        b"\x00" + chunked(b"POST /v1/admin/backup HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer $TOKEN\r\nContent-Length: 17\r\n\r\n"
                          b'{"name":"a.redb"}'),
        b"\x00" + chunked(up, *ops),
        b"\x00" + chunked(up + ops[0] + ops[2], ops[2], ops[4] + ops[6], ops[7], frame(struct.pack(">H", 1000), 8, mask=ZERO)),
        b"\x00" + chunked(ws_head("/v1/ws", "Authorization: Bearer $TOKEN\r\nSec-WebSocket-Protocol: roomcast.v1\r\n"), ops[8]),
        b"\x00" + chunked(ws_head("/v1/ws", "Sec-WebSocket-Protocol: other\r\n")),
        b"\x00" + chunked(ws_head("/v1/ws?access_token=nope")),
        b"\x00" + chunked(up, frame(b'{"op":"se', fin=False, mask=ZERO), frame(b"", 9, mask=ZERO),
                          frame(b'nd","room":"r1","body":1}', opcode=0, mask=ZERO)),
        b"\x00" + chunked(up, frame(b"\x01\x02", 2, mask=ZERO), frame(b"p", 9, mask=ZERO), frame(b"\xc3", mask=ZERO)),
        b"\x00" + chunked(up, ops[0], 250, 250, 250),
        b"\x01" + chunked(ws_head("/v1/ws?user=ann"), ops[0], ops[2], ops[6]),
        b"\x01" + chunked(b"POST /v1/rooms/r1/messages?user=bo HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n" + b'{"body":"x"}'),
        b"\x03" + chunked(ws_head("/v1/echo"), frame(b"echo me", mask=ZERO), frame(b"\xff\x00", 2, mask=ZERO),
                          frame(b"hi", 9, mask=ZERO), frame(b"", 8, mask=ZERO)),
        b"\x04" + chunked(up, frame(b'{"op":"send","room":"r1","body":"' + b"x" * 600 + b'"}', mask=ZERO)),
        b"\x04" + chunked(b"POST /v1/rooms/r1/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer $TOKEN\r\nContent-Length: 900\r\n\r\n"
                          + b"x" * 900),
        b"\x08" + chunked(up, ops[0], ops[2]),
        b"\x10" + chunked(up, *([ops[8]] * 6), *([ops[3]] * 4)),
        b"\x20" + chunked(up, frame(b'{"op":"send","room":"r1","body":[[[[[1]]]]]}', mask=ZERO)),
        b"\x40" + chunked(b"GET / HTTP/1.1\r\n", 5, b"Host: t\r\n\r\n"),
        b"\x40" + chunked(up, ops[0], 15, 15, frame(b"", 10, mask=ZERO), 30),
        b"\x00" + chunked(up + frame(j(OPS[0])) + frame(j(OPS[2]))),
    ]


def ops_seeds():
    rng = random.Random(7)
    seeds = []
    for flags in [0, 0, 1, 3, 4, 16, 64, 0x45]:
        for n in (64, 256, 1024):
            seeds.append(bytes([flags]) + bytes(rng.randrange(256) for _ in range(n)))
    return seeds


# ---------------------------------------------------------------- cluster


def capnp_data(data):
    """A Data value in Cap'n Proto's text format."""
    return '0x"' + data.hex() + '"'


def capnp_text(text):
    return json.dumps(text)


def cluster_frame(items):
    """One Frame (schema/cluster.capnp) of `items` (text-format item values),
    encoded by the `capnp` compiler."""
    schema = os.path.join(HERE, "..", "schema", "cluster.capnp")
    text = "(items = [" + ", ".join(items) + "])"
    out = subprocess.run(["capnp", "encode", schema, "Frame"], input=text.encode(), capture_output=True, check=True)
    return out.stdout


def cluster_seeds():
    def msg(seq):
        body = j({"op": "msg", "room": "lobby", "seq": seq, "ts": 1764441600000, "from": "ann", "body": {"text": "hi"}})
        return bytes([0x81, len(body)]) + body

    def deliver(seq, room="lobby"):
        return f"(deliver = (room = {capnp_text(room)}, hasSeq = true, seq = {seq}, frame = {capnp_data(msg(seq))}))"

    hello = ("(hello = (version = 1, node = \"node-a\", incarnation = 12345, nodesDigest = "
             + capnp_data(bytes(range(32))) + ", nonce = " + capnp_data(bytes(16)) + ", echo = "
             + capnp_data(b"\x01" * 16) + ", mac = " + capnp_data(b"\xee" * 32) + "))")
    join = '(forward = (join = (ticket = 1, room = "lobby", user = "ann", member = 7, hasSince = true, since = 3)))'
    publish = ('(forward = (publish = (ticket = 2, kind = http, room = "lobby", user = "ann", body = '
               + capnp_text(j({"text": "hello", "n": [1, 2.5, None]}).decode()) + ', id = "m-1")))')
    history = ('(forward = (history = (ticket = 3, kind = ws, room = "lobby", hasBefore = true, before = 10, '
               'limit = 50)))')
    joined = ('(answer = (ticket = 1, reply = (joined = (room = "lobby", last = 2, hasRecovered = true, '
              'recovered = true, replay = [' + capnp_data(msg(1)) + ", " + capnp_data(msg(2)) + "]))))")
    page = ('(answer = (ticket = 3, reply = (history = (room = "lobby", more = true, page = [(frame = '
            + capnp_data(msg(1)) + ", jsonStart = 2)]))))")
    presence = ('(answer = (ticket = 4, reply = (presence = (room = "lobby", members = [(user = "ann", since = 1), '
                '(user = "bo", since = 2)]))))')
    refused = ('(answer = (ticket = 5, reply = (refused = (to = 1, room = "lobby", status = 503, code = "overloaded", '
               'message = "storage is busy; retry"))))')
    ack = '(answer = (ticket = 2, reply = (ack = (room = "lobby", seq = 3, ts = 1764441600000, id = "m-1"))))'
    frames = [
        [hello, "(heartbeat = (hearsYou = true))"],
        [deliver(seq) for seq in range(1, 9)],
        [deliver(1, "a"), deliver(2, "b:c"), '(deliver = (room = "lobby", frame = 0x"8102 7b7d"))'],
        [join, publish, history, '(forward = (presence = (ticket = 4, kind = ws, room = "lobby")))',
         '(forward = (leave = (room = "lobby", user = "ann", member = 7)))'],
        [joined, page, presence, refused, ack],
        ["(lagged = void)", "(syncStart = void)", join, "(syncEnd = void)"],
        [],
    ]
    return [cluster_frame(items) for items in frames]


if __name__ == "__main__":
    write("ws_decode", ws_seeds())
    write("http_parse", http_seeds())
    write("proto_decode", proto_seeds())
    write("config", config_seeds())
    write("record", record_seeds())
    write("jwt", jwt_seeds())
    write("conn", conn_seeds())
    write("ops", ops_seeds())
    if shutil.which("capnp"):
        write("cluster_frame", cluster_seeds())
    else:
        print("cluster_frame: skipped (no capnp compiler, Debian package capnproto)")
