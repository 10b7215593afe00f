//! Fuzzes what an OAuth provider sends back: the answer parser of the
//! provider client (`auth::oauth::client::read_response`, any bytes as the
//! answer; it must never panic, never return more body than the limit, and
//! never grow past it) and the redirect a sign-in ends on (`safe_redirect`:
//! whatever the `redirect` parameter was, the result is a local path).
//!
//! Input: the first byte picks the check (even: answer, odd: redirect); the
//! rest is the answer bytes or the redirect text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::fuzz_api::provider::{is_local_path, read_response, safe_redirect};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let head_only = mode & 2 != 0;
        if let Ok(r) = read_response(&mut std::io::Cursor::new(rest), MAX, head_only) {
            assert!(r.body.len() <= MAX, "a body of {} bytes passed a {MAX}-byte limit", r.body.len());
            assert!((100..=999).contains(&r.status), "status {}", r.status);
        }
    } else {
        let text = String::from_utf8_lossy(rest);
        let out = safe_redirect(Some(&text));
        assert!(out == "/" || is_local_path(&out), "{text:?} became {out:?}");
        assert!(out.starts_with('/') && !out.starts_with("//") && !out.contains('\\'), "{text:?} became {out:?}");
        assert!(!out.bytes().any(|b| b.is_ascii_control()), "{text:?} became {out:?}");
    }
});
