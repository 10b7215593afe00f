//! Internals that the fuzz targets (`fuzz/`) and their regression tests
//! (`tests/fuzz_regressions.rs`) drive directly. Not an API: nothing here is
//! stable, and the gateway itself never goes through this module.

pub mod record {
    //! `encode`, `decode` and `ts_of` of one stored message value (the
    //! stored-record layout of `store::codec`): what a damaged database
    //! file feeds the history readers.
    pub use crate::store::codec::{decode, encode, ts_of};
    pub use crate::store::{StoreError, StoredMsg};
}

pub mod provider {
    //! What an OAuth provider (or whoever answers in its place) sends back:
    //! the HTTP answer parser of the provider client, and the redirect a
    //! sign-in ends on.
    pub use crate::auth::oauth::client::{read_response, ClientError, Response};
    pub use crate::auth::oauth::{is_local_path, safe_redirect};
}
