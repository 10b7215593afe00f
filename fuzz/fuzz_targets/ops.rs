//! Fuzzes sequences of operations by up to eight peers on one real reactor
//! (`testkit::Harness`, in memory, no storage): connects, raw bytes,
//! upgrades, WebSocket ops as masked frames, HTTP requests, peers that stop
//! reading (no write room) or close, the clock moving, and a drain. The harness
//! invariants (queue and buffer bounds, room membership on both sides) must
//! hold after every operation, and what each peer receives must be well
//! formed (`common::Peer`); at the end every peer closes, time passes every
//! timeout, and no connection may be left.
//!
//! Input: one settings byte (`common::config`), then
//! `arbitrary`-decoded operations until the data runs out.

#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use roomcast::testkit::{client_frame, upgrade_request, ConnId, Harness};

mod common;
use common::{config, Peer};

const MAX_CONNS: usize = 8;
const MAX_OPS: usize = 400;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Input {
        conn: u8,
        bytes: Vec<u8>,
    },
    Upgrade {
        conn: u8,
        user: u8,
    },
    Ws {
        conn: u8,
        op: WsOp,
    },
    Frame {
        conn: u8,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    },
    Http {
        conn: u8,
        req: HttpReq,
    },
    PeerClose {
        conn: u8,
    },
    SetWriteRoom {
        conn: u8,
        room: u16,
    },
    TakeOutput {
        conn: u8,
    },
    Advance {
        ms: u16,
    },
    /// What SIGTERM starts: every connection is asked to go (1001), then
    /// closed at the drain deadline.
    Drain,
}

#[derive(Arbitrary, Debug)]
enum WsOp {
    Join { room: u8, since: Option<u8>, r: Option<u8> },
    Leave { room: u8, r: Option<u8> },
    Send { room: u8, body: Body, id: Option<u8>, r: Option<u8> },
    History { room: u8, before: Option<u8>, after: Option<u8>, limit: Option<u16>, r: Option<u8> },
    Presence { room: u8, r: Option<u8> },
    Ping { r: Option<u8> },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Number(i32),
    Float(f64),
    Text(String),
    Nested(u8),
    Big(u16),
}

#[derive(Arbitrary, Debug)]
enum HttpReq {
    Health,
    Metrics,
    Page,
    History { room: u8, after: Option<u8>, limit: Option<u8>, user: u8 },
    Presence { room: u8, user: u8 },
    Post { room: u8, body: Body, id: Option<u8>, user: u8 },
    Backup { user: u8 },
}

/// Four valid rooms and one invalid name.
fn room(n: u8) -> &'static str {
    ["lobby", "r1", "r:2", "r.3", "bad room"][usize::from(n % 5)]
}

fn user(n: u8) -> String {
    format!("u{}", n % 4)
}

fn body(b: &Body) -> String {
    match b {
        Body::Number(n) => n.to_string(),
        // Not finite: serde_json writes `null`; the depth and number rules
        // are the reactor's.
        Body::Float(f) => serde_json::to_string(f).unwrap_or_else(|_| "0".into()),
        Body::Text(s) => serde_json::Value::String(s.clone()).to_string(),
        Body::Nested(d) => format!("{}{}", "[".repeat(usize::from(*d % 80)), "]".repeat(usize::from(*d % 80))),
        // Up to 80 KiB: past the default message limit, at little cost.
        Body::Big(n) => format!("\"{}\"", "x".repeat(usize::from(*n % 4096) * 20)),
    }
}

fn with_ref(mut v: serde_json::Value, r: Option<u8>) -> String {
    if let Some(r) = r {
        v["ref"] = r.into();
    }
    v.to_string()
}

fn ws_text(op: &WsOp) -> String {
    use serde_json::json;
    match op {
        WsOp::Join { room: n, since, r } => {
            let mut v = json!({"op": "join", "room": room(*n)});
            if let Some(s) = since {
                v["since"] = (*s).into();
            }
            with_ref(v, *r)
        }
        WsOp::Leave { room: n, r } => with_ref(json!({"op": "leave", "room": room(*n)}), *r),
        WsOp::Send { room: n, body: b, id, r } => {
            // Written out rather than built as a `Value`, so that the body
            // reaches the server exactly as `body` spells it.
            let id = id.map_or(String::new(), |i| format!(r#","id":"m-{}""#, i % 8));
            let r = r.map_or(String::new(), |r| format!(r#","ref":{r}"#));
            format!(r#"{{"op":"send","room":{},"body":{}{id}{r}}}"#, json!(room(*n)), body(b))
        }
        WsOp::History { room: n, before, after, limit, r } => {
            let mut v = json!({"op": "history", "room": room(*n)});
            if let Some(b) = before {
                v["before"] = (*b).into();
            }
            if let Some(a) = after {
                v["after"] = (*a).into();
            }
            if let Some(l) = limit {
                v["limit"] = (*l).into();
            }
            with_ref(v, *r)
        }
        WsOp::Presence { room: n, r } => with_ref(json!({"op": "presence", "room": room(*n)}), *r),
        WsOp::Ping { r } => with_ref(json!({"op": "ping"}), *r),
        WsOp::Raw(s) => s.clone(),
    }
}

fn http_bytes(h: &Harness, req: &HttpReq) -> Vec<u8> {
    let get = |target: String, user: u8| {
        let auth = format!("Authorization: Bearer {}\r\n", h.token(&self::user(user)));
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").into_bytes()
    };
    match req {
        HttpReq::Health => b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        HttpReq::Metrics => b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        HttpReq::Page => b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        HttpReq::History { room: n, after, limit, user } => {
            let mut q = String::new();
            if let Some(a) = after {
                q.push_str(&format!("&after={a}"));
            }
            if let Some(l) = limit {
                q.push_str(&format!("&limit={l}"));
            }
            get(format!("/v1/rooms/{}/messages?x=1{q}", room(*n).replace(' ', "%20")), *user)
        }
        HttpReq::Presence { room: n, user } => {
            get(format!("/v1/rooms/{}/presence", room(*n).replace(' ', "%20")), *user)
        }
        HttpReq::Post { room: n, body: b, id, user: u } => {
            let id = id.map_or(String::new(), |i| format!(r#","id":"p-{}""#, i % 8));
            let payload = format!(r#"{{"body":{}{id}}}"#, body(b));
            format!(
                "POST /v1/rooms/{}/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
                room(*n).replace(' ', "%20"),
                h.token(&user(*u)),
                payload.len()
            )
            .into_bytes()
        }
        HttpReq::Backup { user: u } => format!(
            "POST /v1/admin/backup HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
            h.token(&user(*u))
        )
        .into_bytes(),
    }
}

struct World {
    h: Harness,
    conns: Vec<(ConnId, Peer)>,
    /// Text frames must be protocol messages (not on the echo endpoint).
    json: bool,
}

impl World {
    /// The connection an operation names: one of those made so far, or a
    /// new one when there is none yet.
    fn pick(&mut self, n: u8) -> ConnId {
        if self.conns.is_empty() {
            let c = self.h.connect();
            self.conns.push((c, Peer::default()));
        }
        self.conns[usize::from(n) % self.conns.len()].0
    }

    /// Hands what the server sent to each peer's checks.
    fn take_output(&mut self, only: Option<ConnId>) -> Result<(), String> {
        for (c, peer) in &mut self.conns {
            if only.is_none_or(|o| o == *c) {
                let out = self.h.take_output(*c);
                peer.absorb(&out, self.json)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Connect => {
                let h = &self.h;
                self.conns.retain(|(c, _)| h.is_open(*c));
                if self.conns.len() < MAX_CONNS {
                    let c = self.h.connect();
                    self.conns.push((c, Peer::default()));
                }
            }
            Op::Input { conn, bytes } => {
                let c = self.pick(*conn);
                self.h.input(c, bytes);
            }
            Op::Upgrade { conn, user: u } => {
                let c = self.pick(*conn);
                let token = self.h.token(&user(*u));
                self.h.input(c, &upgrade_request(&token));
            }
            Op::Ws { conn, op } => {
                let c = self.pick(*conn);
                self.h.input(c, &client_frame(true, 1, ws_text(op).as_bytes()));
            }
            Op::Frame { conn, fin, opcode, payload } => {
                let c = self.pick(*conn);
                self.h.input(c, &client_frame(*fin, *opcode, payload));
            }
            Op::Http { conn, req } => {
                let c = self.pick(*conn);
                let bytes = http_bytes(&self.h, req);
                self.h.input(c, &bytes);
            }
            Op::PeerClose { conn } => {
                let c = self.pick(*conn);
                self.h.peer_close(c);
            }
            Op::SetWriteRoom { conn, room } => {
                let c = self.pick(*conn);
                let n = if *room == u16::MAX { usize::MAX } else { usize::from(*room) };
                self.h.set_write_room(c, n);
            }
            Op::TakeOutput { conn } => {
                let c = self.pick(*conn);
                if let Err(e) = self.take_output(Some(c)) {
                    panic!("bad output: {e}");
                }
            }
            Op::Advance { ms } => self.h.advance(Duration::from_millis(u64::from(*ms))),
            Op::Drain => self.h.start_drain(),
        }
    }
}

fn check(h: &Harness, step: usize, op: &dyn std::fmt::Debug) {
    if let Err(e) = h.check_invariants() {
        panic!("invariant broken after step {step} ({op:?}): {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let config = config(flags);
    let json = !config.echo;
    let longest = config.request_timeout.max(config.idle_timeout).max(config.drain_timeout);
    let h = Harness::new(config).expect("a harness");
    let mut w = World { h, conns: Vec::new(), json };
    let mut u = Unstructured::new(rest);
    let mut step = 0;
    while !u.is_empty() && step < MAX_OPS {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        step += 1;
        w.apply(&op);
        check(&w.h, step, &op);
        // Output nobody takes piles up in the harness's pipe, not in the
        // reactor: check and drop it now and then so long runs stay small.
        if step % 16 == 0 {
            if let Err(e) = w.take_output(None) {
                panic!("bad output after step {step} ({op:?}): {e}");
            }
        }
    }
    // Every peer reads again and closes; then time passes every deadline.
    let conns: Vec<ConnId> = w.conns.iter().map(|(c, _)| *c).collect();
    for c in conns {
        w.h.set_write_room(c, usize::MAX);
        if let Err(e) = w.take_output(Some(c)) {
            panic!("bad output at the end: {e}");
        }
        w.h.peer_close(c);
        check(&w.h, step + 1, &"peer close");
    }
    // The close handshake's grace first; the long moves (a walk over every
    // tick of the timer wheel) only while something is still open.
    let ten = Duration::from_secs(10);
    for d in [ten, ten, longest + ten, longest + ten] {
        if w.h.open_conns() == 0 {
            break;
        }
        w.h.advance(d);
        check(&w.h, step + 2, &"final advance");
    }
    assert_eq!(w.h.open_conns(), 0, "connections left open after every peer closed and every timeout passed");
});
