//! Settings shared by every bench target: short runs, so the whole suite
//! finishes in a few minutes on a small machine. Command-line flags
//! (`--quick`, `--sample-size`, `--measurement-time`, ...) still override them.

use std::time::Duration;

use criterion::Criterion;

/// 20 samples over 2 s after a 1 s warm-up, per benchmark.
pub fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2))
}
