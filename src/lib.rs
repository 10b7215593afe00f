//! roomcast: a real-time messaging gateway.
//!
//! The crate is a library plus the `roomcast` binary. The library owns every
//! piece so that tests, benchmarks, fuzz targets and the load generator can
//! reach the sans-IO protocol code without sockets.

pub mod auth;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzz_api;
pub mod log;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod reload;
pub mod rooms;
pub mod server;
pub mod store;
pub mod wait;

#[doc(hidden)]
pub use reactor::testkit;
