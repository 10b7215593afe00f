//! roomcast-loadtest: a load generator for servers speaking the roomcast
//! protocol (PROTOCOL.md). Built like the server: mio event loops, no async
//! runtime, the gateway's sans-IO pieces where they fit.
//!
//! Modules: `attack` (hostile traffic beside healthy clients), `cold` (the
//! reactor's stall while cold rooms load), `frame` (client-side WebSocket framing), `scan` (reading fields
//! out of server JSON without parsing), `check` (seq order checks and latency
//! arithmetic), `stats` (histograms and the result format), `procfs` (CPU and
//! memory from /proc), `net` (targets, sockets, TLS), `engine` (the event
//! loop), `scenario` (the subcommands), `report` (charts).

pub mod attack;
pub mod check;
pub mod cold;
pub mod engine;
pub mod frame;
pub mod net;
pub mod procfs;
pub mod report;
pub mod scan;
pub mod scenario;
pub mod stats;
