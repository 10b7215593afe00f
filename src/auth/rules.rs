//! Room rules: which rooms one identity may read (join, history, presence)
//! and send to, from a token's `rooms`, `send` and `role` claims and the
//! `--default-rooms` setting.
//!
//! A pattern is an exact room name, a name prefix ending in a single `*`
//! (`team-*` is every room whose name starts with `team-`), or `*` alone
//! (every room). `rooms` allows reading; `send` allows sending and, when
//! absent, is the `rooms` list; without a `rooms` claim the default applies
//! to both. `role: admin` allows everything (and the admin endpoints).
//!
//! This module owns the pattern syntax, its bounds and the decisions; it
//! does no I/O and knows nothing of connections: the reactor asks
//! [`Rules::may_read`] / [`Rules::may_send`] before anything is routed to a
//! room's owner, and the HTTP layer turns a refusal into 403.
//!
//! Claims come from anyone holding a signed token (and an issuer's bug is
//! as hostile as an attacker): the number of patterns and each one's length
//! are bounded while the token is decoded ([`rooms_claim`], [`send_claim`]),
//! so no claim can make the server hold a large list, and anything that is
//! not a pattern makes the token invalid rather than silently matching
//! nothing.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::Claims;
use crate::proto::msg::MAX_ROOM_BYTES;

/// Most patterns in one claim (or in `--default-rooms`).
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern, in bytes: a longest room name, or a prefix of one and
/// its `*`.
pub const MAX_PATTERN_BYTES: usize = MAX_ROOM_BYTES + 1;

/// Why a list of patterns was refused. The text is shown to the client
/// (after `invalid token:`) and never quotes the pattern itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("at most {MAX_PATTERNS} patterns")]
    TooMany,
    /// The pattern at this index (from 0) is not one.
    #[error(
        "pattern {0} is not a room pattern (a room name of 1 to 128 bytes of [A-Za-z0-9_.:-], such a name's \
         prefix followed by one trailing `*`, or `*` alone)"
    )]
    Bad(usize),
    #[error("must be an array of strings")]
    NotAList,
}

/// A [`PatternError`] in one claim or setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{claim}` claim: {problem}")]
pub struct RulesError {
    pub claim: &'static str,
    pub problem: PatternError,
}

/// Compiled patterns: whether `*` was among them, the exact names and the
/// prefixes (without their `*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns {
    all: bool,
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

/// Whether `b` may be in a room name (`proto::msg::valid_room`'s bytes).
fn room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// What one pattern is, or `None` when it is not one.
enum One<'a> {
    All,
    Exact(&'a str),
    Prefix(&'a str),
}

fn classify(p: &str) -> Option<One<'_>> {
    if p == "*" {
        return Some(One::All);
    }
    if p.len() > MAX_PATTERN_BYTES {
        return None;
    }
    let (body, prefix) = match p.strip_suffix('*') {
        Some(body) => (body, true),
        None => (p, false),
    };
    // A prefix of a room name is itself 1 to 128 name bytes (an empty one
    // is `*`, handled above); an exact name is a room name.
    if body.is_empty() || body.len() > MAX_ROOM_BYTES || !body.bytes().all(room_byte) {
        return None;
    }
    Some(if prefix { One::Prefix(body) } else { One::Exact(body) })
}

impl Patterns {
    /// Every room.
    pub fn all() -> Patterns {
        Patterns { all: true, ..Patterns::default() }
    }

    /// No room at all.
    pub fn none() -> Patterns {
        Patterns::default()
    }

    /// Compiles a list of patterns (at most [`MAX_PATTERNS`]).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Patterns, PatternError> {
        if items.len() > MAX_PATTERNS {
            return Err(PatternError::TooMany);
        }
        let mut out = Patterns::default();
        for (i, item) in items.iter().enumerate() {
            match classify(item.as_ref()).ok_or(PatternError::Bad(i))? {
                One::All => out.all = true,
                One::Exact(name) => out.exact.push(name.into()),
                One::Prefix(prefix) => out.prefixes.push(prefix.into()),
            }
        }
        if out.all {
            // `*` covers the rest; nothing else need be kept or searched.
            return Ok(Patterns::all());
        }
        Ok(out)
    }

    /// Compiles a comma-separated list (`--default-rooms`): blanks around
    /// each pattern are ignored; the empty string is the empty list.
    pub fn parse_list(text: &str) -> Result<Patterns, PatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Patterns::none());
        }
        let items: Vec<&str> = text.split(',').map(str::trim).take(MAX_PATTERNS + 1).collect();
        Patterns::parse(&items)
    }

    /// Whether `room` is one of these rooms. Names are compared as bytes,
    /// so no case folding or normalisation can widen a pattern.
    pub fn matches(&self, room: &str) -> bool {
        self.all
            || self.exact.iter().any(|e| **e == *room)
            || self.prefixes.iter().any(|p| room.as_bytes().starts_with(p.as_bytes()))
    }

    pub fn is_all(&self) -> bool {
        self.all
    }
}

/// What one identity may do with rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    admin: bool,
    read: Patterns,
    send: Patterns,
}

/// Whether `claims` carry the admin role.
pub fn is_admin(claims: &Claims) -> bool {
    claims.role.as_deref() == Some("admin")
}

impl Rules {
    /// Everything, admin endpoints included.
    pub fn admin() -> Rules {
        Rules { admin: true, read: Patterns::all(), send: Patterns::all() }
    }

    /// Rules for an identity without claims of its own (an anonymous user,
    /// a token without `rooms`): read and send `patterns`.
    pub fn default_from(patterns: Patterns) -> Rules {
        Rules { admin: false, read: patterns.clone(), send: patterns }
    }

    /// The rules of a verified token. `default` is the server's
    /// (`--default-rooms`), shared (not copied) by every token without a
    /// `rooms` or `send` claim.
    pub fn for_claims(claims: &Claims, default: &Arc<Rules>) -> Result<Arc<Rules>, RulesError> {
        if is_admin(claims) {
            return Ok(Arc::new(Rules::admin()));
        }
        let parse = |claim: &'static str, items: &[String]| {
            Patterns::parse(items).map_err(|problem| RulesError { claim, problem })
        };
        let read = match &claims.rooms {
            None if claims.send.is_none() => return Ok(Arc::clone(default)),
            None => default.read.clone(),
            Some(rooms) => parse("rooms", rooms)?,
        };
        let send = match (&claims.send, &claims.rooms) {
            (Some(send), _) => parse("send", send)?,
            (None, Some(_)) => read.clone(),
            (None, None) => default.send.clone(),
        };
        Ok(Arc::new(Rules { admin: false, read, send }))
    }

    /// Join, history and presence.
    pub fn may_read(&self, room: &str) -> bool {
        self.admin || self.read.matches(room)
    }

    /// `send` and HTTP posts.
    pub fn may_send(&self, room: &str) -> bool {
        self.admin || self.send.matches(room)
    }

    /// The admin endpoints.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

// ---------------------------------------------------------------------------
// Decoding the claims
// ---------------------------------------------------------------------------

/// `#[serde(deserialize_with)]` of the `rooms` claim: `null` or absent is
/// `None`; otherwise an array of at most [`MAX_PATTERNS`] patterns, read one
/// at a time and checked as it is read, so a token with a thousand entries
/// or one huge string is refused without being held.
pub fn rooms_claim<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    d.deserialize_option(ClaimVisitor("rooms"))
}

/// [`rooms_claim`] for the `send` claim.
pub fn send_claim<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    d.deserialize_option(ClaimVisitor("send"))
}

struct ClaimVisitor(&'static str);

impl ClaimVisitor {
    fn fail<E: de::Error>(&self, problem: PatternError) -> E {
        E::custom(RulesError { claim: self.0, problem })
    }
}

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = Option<Vec<String>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the `{}` claim, an array of room patterns", self.0)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // `any`, not `seq`: whatever the value is, one of the visits below
        // says what is wrong with it in this module's words.
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            if out.len() == MAX_PATTERNS {
                // One more element is refused without reading it whole.
                return match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(Some(out)),
                    Some(_) => Err(self.fail(PatternError::TooMany)),
                };
            }
            let item = match seq.next_element::<StrItem>() {
                Ok(Some(StrItem(s))) => s,
                Ok(None) => return Ok(Some(out)),
                Err(_) => return Err(self.fail(PatternError::NotAList)),
            };
            if classify(&item).is_none() {
                return Err(self.fail(PatternError::Bad(out.len())));
            }
            out.push(item);
        }
    }

    // Anything else is not a list of patterns.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(self.fail(PatternError::NotAList))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(self.fail(PatternError::NotAList))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(self.fail(PatternError::NotAList))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(self.fail(PatternError::NotAList))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(self.fail(PatternError::NotAList))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.fail(PatternError::NotAList))
    }
}

/// One element of a claim: a string no longer than a pattern may be (a
/// longer one is refused as soon as its length is known, not copied).
struct StrItem(String);

impl<'de> serde::Deserialize<'de> for StrItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a room pattern")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StrItem, E> {
                if s.len() > MAX_PATTERN_BYTES {
                    // Still a string: the caller reports it as a bad pattern.
                    return Ok(StrItem(String::from("\0")));
                }
                Ok(StrItem(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims(rooms: Option<&[&str]>, send: Option<&[&str]>, role: Option<&str>) -> Claims {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Claims {
            sub: "ann".into(),
            exp: u64::MAX,
            role: role.map(str::to_string),
            aud: None,
            iss: None,
            rooms: rooms.map(list),
            send: send.map(list),
        }
    }

    fn default_all() -> Arc<Rules> {
        Arc::new(Rules::default_from(Patterns::all()))
    }

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let p = Patterns::parse(&["lobby", "team-*", "a:b.c_d*"]).unwrap();
        for yes in ["lobby", "team-", "team-red", "team-red-2", "a:b.c_d", "a:b.c_dx"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["lobb", "lobby2", "Lobby", "team", "tea", "xteam-red", "a:b.c_", ""] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(Patterns::parse(&["*"]).unwrap().matches("anything"));
        assert!(Patterns::parse(&["x", "*"]).unwrap().is_all());
        let none = Patterns::parse::<&str>(&[]).unwrap();
        assert!(!none.matches("lobby"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        let long = "a".repeat(129);
        let long_prefix = format!("{}*", "a".repeat(129));
        for bad in ["", "**", "a**", "*a", "a*b", "a b", "é", "a/b", "lobby\n", " lobby", "a\0", &long, &long_prefix] {
            assert_eq!(Patterns::parse(&["ok", bad]), Err(PatternError::Bad(1)), "{bad:?}");
        }
        // The longest name, and the longest prefix with its star.
        assert!(Patterns::parse(&["a".repeat(128)]).is_ok());
        assert!(Patterns::parse(&[format!("{}*", "a".repeat(128))]).is_ok());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("r{i}")).collect();
        assert_eq!(Patterns::parse(&many), Err(PatternError::TooMany));
        assert!(Patterns::parse(&many[..MAX_PATTERNS]).is_ok());
    }

    #[test]
    fn default_rooms_list() {
        let p = Patterns::parse_list(" lobby , team-* ").unwrap();
        assert!(p.matches("lobby") && p.matches("team-x") && !p.matches("other"));
        assert!(Patterns::parse_list("*").unwrap().is_all());
        assert_eq!(Patterns::parse_list(""), Ok(Patterns::none()));
        assert_eq!(Patterns::parse_list("  "), Ok(Patterns::none()));
        assert_eq!(Patterns::parse_list("a,,b"), Err(PatternError::Bad(1)));
        assert_eq!(Patterns::parse_list("a,b*c"), Err(PatternError::Bad(1)));
        let many = vec!["r"; MAX_PATTERNS + 5].join(",");
        assert_eq!(Patterns::parse_list(&many), Err(PatternError::TooMany));
    }

    #[test]
    fn claims_make_rules() {
        let d = Arc::new(Rules::default_from(Patterns::parse(&["lobby"]).unwrap()));
        // No claim: the default itself, shared.
        let r = Rules::for_claims(&claims(None, None, None), &d).unwrap();
        assert!(Arc::ptr_eq(&r, &d));
        assert!(r.may_read("lobby") && r.may_send("lobby") && !r.may_read("x") && !r.is_admin());
        // `rooms` alone: reading and sending.
        let r = Rules::for_claims(&claims(Some(&["a", "t-*"]), None, None), &d).unwrap();
        assert!(r.may_read("a") && r.may_send("a") && r.may_read("t-1") && r.may_send("t-1"));
        assert!(!r.may_read("lobby") && !r.may_send("lobby"));
        // `send` narrows (or widens) sending only.
        let r = Rules::for_claims(&claims(Some(&["a", "b"]), Some(&["a"]), None), &d).unwrap();
        assert!(r.may_read("b") && !r.may_send("b") && r.may_send("a"));
        let r = Rules::for_claims(&claims(Some(&["a"]), Some(&[]), None), &d).unwrap();
        assert!(r.may_read("a") && !r.may_send("a"));
        // `send` without `rooms`: reading is the default's.
        let r = Rules::for_claims(&claims(None, Some(&["x"]), None), &d).unwrap();
        assert!(r.may_read("lobby") && !r.may_send("lobby") && r.may_send("x") && !r.may_read("x"));
        // An empty `rooms`: nothing.
        let r = Rules::for_claims(&claims(Some(&[]), None, None), &default_all()).unwrap();
        assert!(!r.may_read("lobby") && !r.may_send("lobby"));
        // Admin: everything, whatever else the token says.
        let r = Rules::for_claims(&claims(Some(&[]), Some(&[]), Some("admin")), &d).unwrap();
        assert!(r.is_admin() && r.may_read("x") && r.may_send("y"));
        // Another role is no role.
        let r = Rules::for_claims(&claims(None, None, Some("Admin")), &d).unwrap();
        assert!(!r.is_admin());
        // Claims built in code are checked too.
        let e = Rules::for_claims(&claims(Some(&["a*b"]), None, None), &d).unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("`rooms` claim"));
        let e = Rules::for_claims(&claims(Some(&["a"]), Some(&["", "b"]), None), &d).unwrap_err();
        assert_eq!((e.claim, e.problem), ("send", PatternError::Bad(0)));
    }

    #[derive(Debug, serde::Deserialize)]
    struct Both {
        #[serde(default, deserialize_with = "rooms_claim")]
        rooms: Option<Vec<String>>,
        #[serde(default, deserialize_with = "send_claim")]
        send: Option<Vec<String>>,
    }

    fn decode(json: &str) -> Result<Both, String> {
        serde_json::from_str::<Both>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn claims_are_bounded_while_decoded() {
        let b = decode(r#"{"rooms":["a","b*"],"send":null}"#).unwrap();
        assert_eq!(b.rooms, Some(vec!["a".to_string(), "b*".to_string()]));
        assert_eq!(b.send, None);
        assert_eq!(decode("{}").unwrap().rooms, None);
        assert_eq!(decode(r#"{"rooms":[]}"#).unwrap().rooms, Some(vec![]));
        for (json, want) in [
            (r#"{"rooms":"lobby"}"#, "`rooms` claim: must be an array of strings"),
            (r#"{"rooms":[1]}"#, "`rooms` claim: must be an array of strings"),
            (r#"{"rooms":[["a"]]}"#, "`rooms` claim: must be an array of strings"),
            (r#"{"rooms":{"a":1}}"#, "`rooms` claim: must be an array of strings"),
            (r#"{"rooms":true}"#, "`rooms` claim: must be an array of strings"),
            (r#"{"send":["ok","a*b"]}"#, "`send` claim: pattern 1 is not a room pattern"),
            (r#"{"rooms":["a\u0000"]}"#, "`rooms` claim: pattern 0 is not a room pattern"),
        ] {
            let e = decode(json).unwrap_err();
            assert!(e.starts_with(want), "{json}: {e}");
        }
        let huge = format!(r#"{{"rooms":["{}"]}}"#, "a".repeat(1 << 20));
        assert!(decode(&huge).unwrap_err().contains("pattern 0 is not"));
        let many = format!(r#"{{"rooms":[{}]}}"#, vec![r#""a""#; MAX_PATTERNS + 1].join(","));
        assert!(decode(&many).unwrap_err().starts_with("`rooms` claim: at most 64 patterns"));
        let just = format!(r#"{{"rooms":[{}]}}"#, vec![r#""a""#; MAX_PATTERNS].join(","));
        assert_eq!(decode(&just).unwrap().rooms.map(|r| r.len()), Some(MAX_PATTERNS));
    }

    /// Through the real verifier: a token whose claims are not patterns is
    /// an invalid token, and the message says which claim.
    #[test]
    fn verify_refuses_bad_claims() {
        let auth = super::super::Auth::from_secret(b"rules-test-secret-of-32-bytes-or-more", None, None).unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(b"rules-test-secret-of-32-bytes-or-more").unwrap();
        let sign = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "ann", "exp": super::super::now_unix() + 60});
            if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &c, &key).unwrap()
        };
        let ok = auth.verify(&sign(serde_json::json!({"rooms": ["a", "b-*"], "send": ["a"]}))).unwrap();
        assert_eq!(ok.rooms, Some(vec!["a".to_string(), "b-*".to_string()]));
        assert_eq!(ok.send, Some(vec!["a".to_string()]));
        for (bad, claim) in [
            (serde_json::json!({"rooms": ["a*b"]}), "`rooms` claim"),
            (serde_json::json!({"send": "a"}), "`send` claim"),
            (serde_json::json!({"rooms": vec!["a"; MAX_PATTERNS + 1]}), "`rooms` claim"),
        ] {
            match auth.verify(&sign(bad.clone())) {
                Err(super::super::AuthError::Invalid(m)) => assert!(m.contains(claim), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    proptest! {
        /// A prefix pattern matches exactly the names starting with it; an
        /// exact one only itself.
        #[test]
        fn prefix_semantics(prefix in "[a-z:._-]{1,8}", room in "[a-z:._-]{1,12}") {
            let p = Patterns::parse(&[format!("{prefix}*")]).unwrap();
            prop_assert_eq!(p.matches(&room), room.starts_with(&prefix));
            let e = Patterns::parse(std::slice::from_ref(&prefix)).unwrap();
            prop_assert_eq!(e.matches(&room), room == prefix);
        }

        /// Any text: parsing never panics, and a pattern that parses and
        /// is not `*` never matches a room outside the room-name syntax
        /// (so nothing odd can sneak past the name check).
        #[test]
        fn parse_never_panics(items in proptest::collection::vec(".{0,20}", 0..5), room in ".{0,20}") {
            if let Ok(p) = Patterns::parse(&items) {
                if !p.is_all() && p.matches(&room) {
                    prop_assert!(room.bytes().all(room_byte), "{:?} matched {:?}", items, room);
                }
            }
            let _ = Patterns::parse_list(&items.join(","));
        }

        #[test]
        fn claim_decoding_never_panics(json in r#"\{"rooms":[\[\]"a*,0-9{}:\\ ]{0,40}\}"#) {
            let _ = decode(&json);
        }
    }
}
