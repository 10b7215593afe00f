//! The value syntaxes of the settings: durations (`10s`), sizes (`64KiB`),
//! booleans and anything with a `FromStr`, read the same way from a flag, an
//! environment variable or a TOML string; and their display in the syntax
//! they are read in, for messages and docs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

pub(crate) fn parse_from_str<T>(s: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    s.trim().parse().map_err(|e: T::Err| format!("invalid value {s:?}: {e}"))
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid value {s:?}: expected true or false (also 1/0, yes/no, on/off)")),
    }
}

/// Splits `"64KiB"` into `(64, "KiB")`; the number must be plain decimal digits.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    // The digits are ASCII, so this cut is on a character boundary.
    let (number, unit) = s.split_at_checked(digits)?;
    Some((number.parse().ok()?, unit.trim()))
}

/// A duration: `500ms`, `10s`, `5m`, `1h`, `2d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "invalid duration {s:?}: expected a whole number with an optional unit \
             (ms, s, m, h, d), e.g. 500ms, 10s, 5m; a bare number is seconds"
        )
    };
    let (n, unit) = split_number(s).ok_or_else(expected)?;
    let too_large = || format!("duration {s:?} is too large");
    let seconds_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    n.checked_mul(seconds_per).map(Duration::from_secs).ok_or_else(too_large)
}

/// A byte count: a bare number, or with `B`, `KiB`, `MiB` or `GiB` (any case).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let expected = || {
        format!(
            "invalid size {s:?}: expected a number of bytes, optionally with \
             KiB, MiB or GiB, e.g. 65536 or 64KiB"
        )
    };
    let (n, unit) = split_number(s).ok_or_else(expected)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(expected()),
    };
    n.checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A TOML duration: a string as [`parse_duration`] takes, or integer seconds.
pub(crate) struct TomlDuration(pub Duration);

impl<'de> Deserialize<'de> for TomlDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(V).map(TomlDuration)
    }
}

/// A TOML size: a string as [`parse_size`] takes, or an integer byte count.
pub(crate) struct TomlSize(pub usize);

impl<'de> Deserialize<'de> for TomlSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = usize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
                parse_size(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
                usize::try_from(v).map_err(|_| E::custom("size is too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
                usize::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V).map(TomlSize)
    }
}

/// `3600s` -> `1h`: the largest unit that divides the duration exactly, in
/// the syntax [`parse_duration`] reads.
pub(crate) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// `1073741824` -> `1GiB`, in the syntax [`parse_size`] reads.
pub(crate) fn show_size(n: usize) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        let per = 1usize << shift;
        if n >= per && n.is_multiple_of(per) {
            return format!("{}{unit}", n / per);
        }
    }
    n.to_string()
}
