//! Several `roomcast serve` processes acting as one gateway.
//!
//! Every room has one owner node (rendezvous hashing over the configured
//! node ids, `ring`), and inside it one owner reactor as on a single node.
//! A node that does not own a room forwards what its clients ask of it to
//! the owner, whose core treats the remote connection as a member like any
//! other: its deliveries go, once per commit, to the member's node (a
//! pseudo-reactor of the core, one per node), which shares the frame with
//! all its local members. `node` is the thread that does this for one
//! process; `link` carries its frames over nng; `wire` encodes them.
//!
//! This module owns the handle the reactors share: who owns a room, where
//! the node thread's mailbox is, and the link counters for `/metrics` and
//! `/v1/cluster`.

pub mod bus;
// Generated from schema/cluster.capnp (see there for how to regenerate it).
#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, unused_qualifications, unreachable_pub, missing_docs)]
pub mod cluster_capnp;
pub mod identity;
pub mod link;
pub mod node;
pub mod ring;
pub mod wire;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::config::cluster::ClusterConfig;

/// What a peer's link is, as `/metrics` and `/v1/cluster` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Down = 0,
    Up = 1,
    /// Up, but its queue overflowed: what was queued is dropped and the
    /// peer resyncs.
    Lagging = 2,
}

impl LinkState {
    fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Up,
            2 => LinkState::Lagging,
            _ => LinkState::Down,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Up => "up",
            LinkState::Lagging => "lagging",
        }
    }
}

/// One peer's counters (written by the node and link threads).
#[derive(Default)]
pub struct PeerStats {
    pub state: AtomicU8,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub records_sent: AtomicU64,
    pub records_received: AtomicU64,
    pub queue_bytes: AtomicU64,
    pub resyncs: AtomicU64,
    /// Sends that waited out their timeout (the frame is tried again).
    pub send_timeouts: AtomicU64,
}

impl PeerStats {
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Relaxed))
    }
}

pub struct Stats {
    /// By node index; this node's own entry stays unused.
    pub peers: Vec<PeerStats>,
    pub hellos_refused: AtomicU64,
    pub bad_frames: AtomicU64,
}

/// What the reactors know of the cluster.
pub struct Handle {
    pub config: ClusterConfig,
    /// This node's index in `config.nodes`.
    pub me: usize,
    /// Random per process start; peers see a new one as a restart.
    pub incarnation: u64,
    /// Where the node thread's mailbox is among the shared mailboxes (right
    /// after the reactors').
    pub mailbox: usize,
    pub stats: Stats,
}

impl Handle {
    pub fn new(config: ClusterConfig, mailbox: usize) -> Handle {
        let me = config.me();
        let n = config.nodes.len();
        let mut seed = [0u8; 8];
        // A failed read leaves zeros: still a valid (if guessable) id.
        let _ = getrandom::fill(&mut seed);
        Handle {
            me,
            incarnation: u64::from_le_bytes(seed) | 1,
            mailbox,
            stats: Stats {
                peers: (0..n).map(|_| PeerStats::default()).collect(),
                hellos_refused: AtomicU64::new(0),
                bad_frames: AtomicU64::new(0),
            },
            config,
        }
    }

    /// The node owning `room`, when that is not this one.
    pub fn owner(&self, room: &str) -> Option<u16> {
        let o = ring::owner_node(room, &self.config.nodes);
        (o != self.me).then_some(o as u16)
    }

    /// The cluster's lines of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        type Get = fn(&PeerStats) -> u64;
        let per_peer: [(&str, &str, &str, Get); 8] = [
            ("roomcast_cluster_peer_up", "gauge", "1 while the link to the peer is up (or lagging).", |p| {
                u64::from(p.state() != LinkState::Down)
            }),
            ("roomcast_cluster_frames_sent_total", "counter", "Frames sent to the peer.", |p| {
                p.frames_sent.load(Relaxed)
            }),
            ("roomcast_cluster_frames_received_total", "counter", "Frames received from the peer.", |p| {
                p.frames_received.load(Relaxed)
            }),
            ("roomcast_cluster_records_sent_total", "counter", "Items (deliveries, forwards, answers) sent.", |p| {
                p.records_sent.load(Relaxed)
            }),
            ("roomcast_cluster_records_received_total", "counter", "Items received.", |p| {
                p.records_received.load(Relaxed)
            }),
            ("roomcast_cluster_queue_bytes", "gauge", "Bytes queued for the peer.", |p| p.queue_bytes.load(Relaxed)),
            ("roomcast_cluster_resyncs_total", "counter", "Resyncs with the peer (reconnects, lagging).", |p| {
                p.resyncs.load(Relaxed)
            }),
            (
                "roomcast_cluster_send_timeouts_total",
                "counter",
                "Sends the peer took none of for 200 ms (tried again).",
                |p| p.send_timeouts.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in per_peer {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, n) in self.config.nodes.iter().enumerate() {
                if i != self.me {
                    let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", n.id, get(&self.stats.peers[i]));
                }
            }
        }
        for (name, help, v) in [
            ("roomcast_cluster_hellos_refused_total", "Link hellos refused (secret, node list, version).", {
                &self.stats.hellos_refused
            }),
            ("roomcast_cluster_bad_frames_total", "Peer frames refused (undecodable, not allowed); link closed.", {
                &self.stats.bad_frames
            }),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
    }

    /// `GET /v1/cluster`: this node's view, as JSON.
    pub fn view_json(&self) -> Vec<u8> {
        let peers: Vec<serde_json::Value> = self
            .config
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me)
            .map(|(i, n)| {
                let p = &self.stats.peers[i];
                serde_json::json!({
                    "id": n.id,
                    "addr": n.addr,
                    "state": p.state().label(),
                    "frames_sent": p.frames_sent.load(Relaxed),
                    "frames_received": p.frames_received.load(Relaxed),
                    "records_sent": p.records_sent.load(Relaxed),
                    "records_received": p.records_received.load(Relaxed),
                    "queue_bytes": p.queue_bytes.load(Relaxed),
                    "resyncs": p.resyncs.load(Relaxed),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "node": self.config.node_id,
            "addr": self.config.nodes.get(self.me).map(|n| n.addr.as_str()),
            "incarnation": format!("{:016x}", self.incarnation),
            "hellos_refused": self.stats.hellos_refused.load(Relaxed),
            "bad_frames": self.stats.bad_frames.load(Relaxed),
            "peers": peers,
        }))
        .unwrap_or_default()
    }
}
