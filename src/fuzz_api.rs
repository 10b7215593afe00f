//! Internals that the fuzz targets (`fuzz/`) and their regression tests
//! (`tests/fuzz_regressions.rs`) drive directly. Not an API: nothing here is
//! stable, and the gateway itself never goes through this module.

/// The stored-record layout (`store::codec`): what a damaged database file
/// feeds the history readers.
///
/// `store` keeps `codec` private, so the same source file is compiled here a
/// second time rather than widening the store's own module tree.
#[allow(clippy::duplicate_mod)]
#[path = "store/codec.rs"]
mod codec;

pub mod record {
    //! `encode`, `decode` and `ts_of` of one stored message value.
    pub use super::codec::{decode, encode, ts_of};
    pub use crate::store::{StoreError, StoredMsg};
}

// `codec.rs` names its types through `super::`.
use crate::store::{StoreError, StoredMsg};
