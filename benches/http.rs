//! HTTP/1.1 head parsing: `proto::http::parse_request` on what a reactor
//! reads first from a new connection.
//!
//! - `upgrade`: a WebSocket upgrade to `/v1/ws` carrying a JWT in the
//!   `access_token` query parameter (about 400 bytes), the request every
//!   client opens with; `upgrade+check` adds the upgrade validation and the
//!   token lookup the reactor does next.
//! - `small_get`: a minimal `GET /healthz`.
//! - `pipelined_16`: 16 small GETs in one buffer, parsed front to back the
//!   way a connection drains its read buffer.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roomcast::proto::http::{parse_request, websocket_upgrade, Limits};

mod common;

/// A browser-style upgrade: the token rides in the query because browsers
/// cannot set an Authorization header on a WebSocket.
const UPGRADE: &[u8] = b"GET /v1/ws?access_token=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
eyJzdWIiOiJ1c2VyLTAwNDIiLCJpYXQiOjE3NjcyMjU2MDAsImV4cCI6MTc2NzIyOTIwMH0.\
Xk3v9sQm0pR2tL7wYb4nHc8dJf1aZe6uVg5iKo-Nq_A HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
User-Agent: roomcast-loadtest/0.1\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: roomcast.v1\r\n\
Origin: http://127.0.0.1:8080\r\n\
\r\n";

const SMALL_GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

const PIPELINED: usize = 16;

/// Parses every request in `buf`, returning how many there were.
fn parse_all(buf: &[u8], limits: &Limits) -> usize {
    let mut rest = buf;
    let mut n = 0;
    while let Ok(Some((req, used))) = parse_request(rest, limits) {
        black_box(&req);
        n += 1;
        rest = rest.get(used..).unwrap_or_default();
    }
    n
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();

    // Fail loudly on a fixture the parser does not accept: the numbers
    // would otherwise time an error path.
    match parse_request(UPGRADE, &limits) {
        Ok(Some((req, used))) => {
            assert_eq!(used, UPGRADE.len());
            assert!(matches!(websocket_upgrade(&req), Ok(Some(_))));
            assert!(req.query_param("access_token").is_some());
        }
        other => panic!("upgrade fixture does not parse: {other:?}"),
    }
    let pipelined = SMALL_GET.repeat(PIPELINED);
    assert_eq!(parse_all(&pipelined, &limits), PIPELINED);

    let mut g = c.benchmark_group("http_parse");

    g.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: UPGRADE.len() as u64 });
    g.bench_function("upgrade", |b| b.iter(|| parse_request(black_box(UPGRADE), &limits)));
    g.bench_function("upgrade+check", |b| {
        b.iter(|| {
            let Ok(Some((req, _))) = parse_request(black_box(UPGRADE), &limits) else {
                return None;
            };
            let up = websocket_upgrade(&req).ok().flatten();
            let token = req.query_param("access_token");
            Some((up, token))
        })
    });

    g.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: SMALL_GET.len() as u64 });
    g.bench_function("small_get", |b| b.iter(|| parse_request(black_box(SMALL_GET), &limits)));

    g.throughput(Throughput::ElementsAndBytes { elements: PIPELINED as u64, bytes: pipelined.len() as u64 });
    g.bench_function("pipelined_16", |b| b.iter(|| parse_all(black_box(&pipelined), &limits)));

    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_parse
}
criterion_main!(benches);
