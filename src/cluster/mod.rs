//! Several `roomcast serve` processes acting as one gateway.

// Generated from schema/cluster.capnp (see there for how to regenerate it).
#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, unused_qualifications, unreachable_pub, missing_docs)]
pub mod cluster_capnp;
pub mod ring;
pub mod wire;
