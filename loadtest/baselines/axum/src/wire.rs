//! Protocol v1 messages as serde types: what clients send and what the server
//! answers.
//!
//! Written the way a typical serde user would: an internally tagged enum for
//! requests, `serde_json::Value` for bodies, one more tagged enum for replies,
//! serialised with `serde_json::to_string`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest `ref` string (bytes) and client message `id`.
pub const MAX_REF_BYTES: usize = 64;
pub const MAX_ID_BYTES: usize = 64;
pub const MAX_ROOM_BYTES: usize = 128;
pub const DEFAULT_HISTORY_LIMIT: i64 = 50;
pub const MAX_HISTORY_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Join { room: String, since: Option<u64> },
    Leave { room: String },
    Send { room: String, body: Value, id: Option<String> },
    History { room: String, before: Option<u64>, after: Option<u64>, limit: Option<i64> },
    Presence { room: String },
    Ping,
}

impl Request {
    pub fn room(&self) -> Option<&str> {
        match self {
            Request::Join { room, .. }
            | Request::Leave { room }
            | Request::Send { room, .. }
            | Request::History { room, .. }
            | Request::Presence { room } => Some(room),
            Request::Ping => None,
        }
    }
}

/// Parses one text frame. The `ref` is taken out first so that an error about
/// the rest of the message can still carry it.
pub fn parse(text: &str) -> Result<(Option<Value>, Request), (Option<Value>, String)> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| (None, e.to_string()))?;
    let Some(obj) = v.as_object_mut() else {
        return Err((None, "a message is one JSON object".to_string()));
    };
    let r = match obj.remove("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_REF_BYTES => Some(Value::String(s)),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
        Some(_) => return Err((None, "ref is a string of at most 64 bytes or an integer".to_string())),
    };
    match serde_json::from_value::<Request>(v) {
        Ok(req) => Ok((r, req)),
        Err(e) => Err((r, e.to_string())),
    }
}

/// `[A-Za-z0-9_.:-]{1,128}`.
pub fn valid_room(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// A stored message: the `msg` object without `op`, as history returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgItem {
    pub room: String,
    pub seq: u64,
    pub ts: u64,
    pub from: String,
    pub body: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MemberOut<'a> {
    pub user: &'a str,
    pub since: u64,
}

#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply<'a> {
    Joined {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
        room: &'a str,
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Left {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
        room: &'a str,
    },
    Msg {
        room: &'a str,
        seq: u64,
        ts: u64,
        from: &'a str,
        body: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
        room: &'a str,
        seq: u64,
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
        room: &'a str,
        messages: Vec<&'a MsgItem>,
        more: bool,
    },
    Presence {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
        room: &'a str,
        members: Vec<MemberOut<'a>>,
    },
    PresenceDiff {
        room: &'a str,
        joins: Vec<&'a str>,
        leaves: Vec<&'a str>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r: Option<&'a Value>,
        code: &'a str,
        message: &'a str,
    },
}

impl Reply<'_> {
    /// The JSON text. Serialising these types cannot fail (string keys only),
    /// so the fallback is never taken.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"op":"error","code":"internal","message":"encoding failed"}"#.to_string())
    }
}

pub fn error(r: Option<&Value>, code: &str, message: &str) -> String {
    Reply::Error { r, code, message }.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ops_and_refs() {
        let (r, req) = parse(r#"{"op":"join","room":"a","since":3,"ref":"x"}"#).unwrap();
        assert_eq!(r, Some(Value::from("x")));
        assert!(matches!(req, Request::Join { since: Some(3), .. }));
        let (r, req) = parse(r#"{"op":"send","room":"a","body":null,"ref":7}"#).unwrap();
        assert_eq!(r, Some(Value::from(7)));
        assert!(matches!(req, Request::Send { body: Value::Null, .. }));
        let (r, _) = parse(r#"{"op":"nope","ref":1}"#).unwrap_err();
        assert_eq!(r, Some(Value::from(1)));
        assert!(parse(r#"{"op":"send","room":"a"}"#).is_err());
        assert!(parse("[1]").is_err());
    }

    #[test]
    fn replies_omit_missing_ref() {
        assert_eq!(Reply::Pong { r: None }.to_json(), r#"{"op":"pong"}"#);
        let v = Value::from("a7");
        let ack = Reply::Ack { r: Some(&v), room: "lobby", seq: 3, ts: 9, id: None };
        assert_eq!(ack.to_json(), r#"{"op":"ack","ref":"a7","room":"lobby","seq":3,"ts":9}"#);
    }

    #[test]
    fn room_names() {
        assert!(valid_room("lobby:1_a.b-c"));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room(&"x".repeat(129)));
    }
}
