//! What the reactor targets (`conn`, `ops`) share: the settings their first
//! input byte picks.

use std::time::Duration;

use roomcast::config::Config;

/// The settings: bit 0 anonymous, 1 echo endpoint, 2 small messages and
/// queue, 3 audience and issuer required, 4 tight rate limits, 5 shallow
/// bodies, 6 short timeouts.
pub fn config(flags: u8) -> Config {
    let mut c = Config { threads: 1, ..Config::default() };
    c.anonymous = flags & 1 != 0;
    c.echo = flags & 2 != 0;
    if flags & 4 != 0 {
        c.max_message_bytes = 512;
        c.max_queue_bytes = 4096;
    }
    if flags & 8 != 0 {
        c.jwt_audience = Some("rc".into());
        c.jwt_issuer = Some("me".into());
    }
    if flags & 16 != 0 {
        c.send_rate = 1.0;
        c.send_burst = 2;
        c.request_rate = 1.0;
        c.request_burst = 2;
    }
    if flags & 32 != 0 {
        c.max_body_depth = 3;
    }
    if flags & 64 != 0 {
        c.request_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(2);
        c.ping_interval = Duration::from_secs(1);
    }
    c
}
