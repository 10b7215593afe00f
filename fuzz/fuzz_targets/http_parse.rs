//! Fuzzes the HTTP/1.1 request parser the way a connection drives it: parse
//! from the front of the buffer, drop what was consumed, parse the rest.
//! Checks that nothing panics, that consumption is sane, that a request is
//! never reported complete early (every shorter prefix needs more bytes),
//! and that "need more bytes" never outgrows `Limits::max_request_bytes`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::proto::http::{parse_request, websocket_upgrade, Limits};

fuzz_target!(|data: &[u8]| {
    // Small limits so that the fuzzer reaches every limit quickly.
    let limits = Limits { max_head: 512, max_target: 128, max_headers: 16, max_body: 1024 };
    let mut rest = data;
    loop {
        match parse_request(rest, &limits) {
            Ok(Some((req, used))) => {
                assert!(used > 0 && used <= rest.len());
                assert!(used <= limits.max_request_bytes());
                assert!(req.body.len() <= limits.max_body);
                assert!(req.minor_version <= 1);
                assert!(req.path.len() + req.query.len() < limits.max_target + 1);
                // The same bytes cut short must only ask for more.
                assert!(matches!(parse_request(&rest[..used - 1], &limits), Ok(None)));
                let cut = usize::from(rest[0]) * used / 256;
                assert!(matches!(parse_request(&rest[..cut], &limits), Ok(None)));
                let _ = req.query_param("access_token");
                let _ = websocket_upgrade(&req);
                rest = &rest[used..];
            }
            Ok(None) => {
                assert!(rest.len() < limits.max_request_bytes());
                break;
            }
            Err(e) => {
                assert!((400..=505).contains(&e.status()));
                break;
            }
        }
    }
});
