#!/usr/bin/env bash
# Short fuzz runs of every target in fuzz/fuzz_targets (libFuzzer, no sanitizer):
#   scripts/fuzz.sh [SECONDS] [TARGET...]    (default: every target)
#
# SECONDS, else FUZZ_SECONDS, else 25, is the run time of each target; 0 only
# runs each target over its corpus once. The targets are built the way
# `cargo fuzz build -s none` builds them (sancov coverage, `--cfg fuzzing`,
# debug assertions, overflow checks) with plain cargo, so cargo-fuzz is not
# needed and the stable toolchain does. `--target` keeps build scripts and
# proc-macros uninstrumented. Dictionaries: fuzz/dict/<target>.dict.
#
# Each target starts from its committed seeds (fuzz/corpus/<target>, only
# read) plus what earlier runs on this machine found (fuzz/target/corpus/
# <target>, where new inputs go). One summary line per target; a crashing
# input is kept as target/fuzz-artifacts/<target>-crash-<sha1> and the run
# exits 1 (also when the build fails). Reproduce a crash with
#   fuzz/target/<host>/release/<target> target/fuzz-artifacts/<file>
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

secs="${FUZZ_SECONDS:-25}"
if [ "$#" -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    secs="$1"
    shift
fi
case "$secs" in
'' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number of seconds, not '$secs'" >&2; exit 2 ;;
0) budget=(-runs=0) ;;
*) budget=(-max_total_time="$secs") ;;
esac
host="$(rustc -vV | sed -n 's/^host: //p')"
build_dir="$ROOT/fuzz/target"
bin_dir="$build_dir/$host/release"
artifacts="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-artifacts"
logs="$build_dir/logs"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    # Every [[bin]] of the fuzz crate.
    mapfile -t targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name *=/ { gsub(/[" ]/, "", $0); sub(/^name=/, "", $0); print; bin = 0 }' fuzz/Cargo.toml)
fi

mkdir -p "$artifacts" "$logs"
flags=(
    --cfg fuzzing
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cdebug-assertions
    -Coverflow-checks
)
echo "==> fuzz: building ${#targets[@]} targets for $host"
start=$SECONDS
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# The fuzz crate is its own workspace with its own target directory; a
# CARGO_TARGET_DIR or RUSTFLAGS meant for the main build must not leak in.
if ! env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
    CARGO_TARGET_DIR="$build_dir" RUSTFLAGS="${flags[*]}" \
    cargo build --manifest-path fuzz/Cargo.toml --release --target "$host" "${bins[@]}" \
    >"$logs/build.log" 2>&1; then
    tail -n 60 "$logs/build.log" >&2
    echo "==> fuzz: build FAILED (log: $logs/build.log)" >&2
    exit 1
fi
if [ "$secs" = 0 ]; then what="each corpus once"; else what="${secs}s per target"; fi
echo "==> fuzz: built in $((SECONDS - start))s; $what"

# The config target writes its settings file under TMPDIR: a scratch one.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/roomcast-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

crashed=()
for t in "${targets[@]}"; do
    work="$build_dir/corpus/$t"
    mkdir -p "$work"
    corpora=("$work")
    if [ -d "fuzz/corpus/$t" ]; then corpora+=("fuzz/corpus/$t"); fi
    dict=()
    if [ -f "fuzz/dict/$t.dict" ]; then dict=(-dict="fuzz/dict/$t.dict"); fi
    log="$logs/$t.log"
    before="$(find "$artifacts" -maxdepth 1 -name "$t-*" | wc -l)"
    t0=$SECONDS
    rc=0
    TMPDIR="$scratch" RUST_BACKTRACE=1 "$bin_dir/$t" \
        "${budget[@]}" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$t-" "${dict[@]}" "${corpora[@]}" >"$log" 2>&1 || rc=$?
    wall=$((SECONDS - t0))
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    took="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)"
    after="$(find "$artifacts" -maxdepth 1 -name "$t-*" | wc -l)"
    crash=no
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then crash=yes; fi
    printf 'fuzz %-14s runs %10s  exec/s %7s  %4ss  crash %s\n' \
        "$t" "${runs:-?}" "${rate:-?}" "${took:-$wall}" "$crash"
    if [ "$crash" = yes ]; then
        crashed+=("$t")
        echo "---- $t (exit $rc), last lines of $log:" >&2
        grep -v '^#[0-9]' "$log" | tail -n 40 >&2
        find "$artifacts" -maxdepth 1 -name "$t-*" -newer "$logs/build.log" -printf 'kept: %p\n' >&2
    fi
done

if [ "${#crashed[@]}" -gt 0 ]; then
    echo "==> fuzz: FAILED: $(IFS=,; echo "${crashed[*]}")" >&2
    exit 1
fi
echo "==> fuzz: ${#targets[@]} targets, no crash ($((SECONDS - start))s in all)"
