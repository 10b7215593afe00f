//! The gateway process: starts the event loops and runs until drained.
//!
//! Placeholder: `run` returns at once until the reactor is wired in.

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Startup(String),
}

/// Serves with `config` until shut down.
pub fn run(config: Config) -> Result<(), ServerError> {
    let _ = config;
    Ok(())
}
