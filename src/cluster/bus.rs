//! The bus tap (`--bus-publish ADDR`): every committed message of the rooms
//! this node owns, published on an nng `Pub0` socket as
//! `room/<name>\0<msg JSON>`, so other services subscribe by topic prefix
//! with any nng binding. Best effort, as pub/sub is: a full queue here or a
//! slow subscriber drops messages, and nothing waits for the bus.

use std::thread;

use crate::wait::{Receiver, Sender};
use nng::{Protocol, Socket};

use crate::proto::msg::MsgFrame;
use crate::rooms::RoomName;

/// Messages waiting for the bus thread at most; past it they are dropped.
const QUEUE: usize = 64 * 1024;

/// Binds the socket (failing startup on a bad address) and starts the
/// thread that publishes what the owners hand it.
pub fn spawn(addr: &str) -> Result<Sender<(RoomName, MsgFrame)>, String> {
    let socket = Socket::new(Protocol::Pub0).map_err(|e| format!("bus-publish: {e}"))?;
    socket.listen(addr).map_err(|e| format!("bus-publish: cannot listen on {addr}: {e}"))?;
    let (tx, rx) = crate::wait::bounded(QUEUE);
    thread::Builder::new()
        .name("bus".into())
        .spawn(move || publish(socket, rx))
        .map_err(|e| format!("bus-publish: cannot start its thread: {e}"))?;
    Ok(tx)
}

/// `room/<name>\0<json>`.
pub fn payload(room: &str, frame: &MsgFrame) -> Vec<u8> {
    let json = frame.json();
    let mut out = Vec::with_capacity(5 + room.len() + 1 + json.len());
    out.extend_from_slice(b"room/");
    out.extend_from_slice(room.as_bytes());
    out.push(0);
    out.extend_from_slice(json);
    out
}

fn publish(socket: Socket, rx: Receiver<(RoomName, MsgFrame)>) {
    // Ends when every reactor has dropped its sender (the server stopped).
    for (room, frame) in rx.iter() {
        // Pub0 never blocks: with no subscriber or a slow one it drops.
        let _ = socket.send(payload(&room, &frame).as_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_topic_a_nul_and_the_json() {
        let f = crate::proto::msg::encode_msg_raw("lobby", 7, 1, "ann", b"{\"t\":1}", None);
        let p = payload("lobby", &f);
        let nul = p.iter().position(|b| *b == 0).unwrap();
        assert_eq!(&p[..nul], b"room/lobby");
        let v: serde_json::Value = serde_json::from_slice(&p[nul + 1..]).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["room"], "lobby");
    }
}
