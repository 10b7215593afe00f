//! Several `roomcast serve` processes acting as one gateway.

pub mod identity;
pub mod ring;
pub mod wire;
