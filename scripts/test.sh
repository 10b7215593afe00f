#!/usr/bin/env bash
# The test command. Installs what is missing (once; later runs skip it), then:
#   1. cargo build --release --workspace   (the gateway and the load generator)
#   2. cargo test --release --workspace    (unit tests, property tests, doc tests)
#   3. scripts/fuzz.sh               (every fuzz target for FUZZ_SECONDS, default 25)
#   4. pytest tests/e2e              (the real binary driven by Python, Node,
#                                     Chromium and Autobahn|Testsuite clients)
# Every step runs even when an earlier one failed; the exit status is non-zero if
# any failed. The end-to-end summary is the last thing printed.
#
# Environment: CI=true shortens the Autobahn run; PYTEST_ARGS adds pytest options
# (for example PYTEST_ARGS='-k protocol'); FUZZ_SECONDS sets the time per fuzz
# target (0: only replay the seed corpus).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

export PYTHONDONTWRITEBYTECODE=1
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LOGS="$TARGET_DIR/test-setup"
mkdir -p "$LOGS"
FAILED=()

# quietly LOG CMD...: runs CMD with its output in LOG, shown only if it fails.
quietly() {
    local log="$LOGS/$1.log"
    shift
    if "$@" >"$log" 2>&1; then return 0; fi
    echo "failed: $*" >&2
    tail -n 40 "$log" >&2
    return 1
}

setup_system() {
    ensure_build_deps || return 1
    local want=()
    command -v chromium >/dev/null 2>&1 || want+=(chromium)
    command -v python3 >/dev/null 2>&1 || want+=(python3 python3-venv)
    command -v node >/dev/null 2>&1 || want+=(nodejs npm)
    # The cluster frames' generated code is checked against its schema with it.
    command -v capnp >/dev/null 2>&1 || want+=(capnproto)
    if [ "${#want[@]}" -gt 0 ]; then apt_install "${want[@]}" || return 1; fi
}

setup_python() {
    local req=tests/e2e/requirements.txt stamp=.venv/.requirements
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
        rm -rf .venv
        if ! python3 -m venv .venv >/dev/null 2>&1; then
            # Debian's python3 needs python3-venv for ensurepip.
            rm -rf .venv
            apt_install python3-venv || return 1
            python3 -m venv .venv || return 1
        fi
    fi
    if ! cmp -s "$req" "$stamp"; then
        say "installing Python test dependencies into .venv"
        quietly pip .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req" || return 1
        cp "$req" "$stamp"
    fi
}

setup_node() {
    local major
    major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
    if [ "$major" -lt 18 ]; then
        echo "node >= 18 is needed for tests/node (found ${major})" >&2
        return 1
    fi
    if [ ! -d tests/node/node_modules/ws ] || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
        say "installing Node test dependencies (npm ci in tests/node)"
        quietly npm npm ci --prefix tests/node --no-audit --no-fund --loglevel=error || return 1
    fi
    # The OpenID provider of tests/e2e/test_oauth.py (oidc-provider wants node >= 20).
    if [ ! -d tests/oauth/node_modules/oidc-provider ] || [ tests/oauth/package-lock.json -nt tests/oauth/node_modules/.package-lock.json ]; then
        say "installing the OpenID provider for the OAuth tests (npm ci in tests/oauth)"
        quietly npm-oauth npm ci --prefix tests/oauth --no-audit --no-fund --loglevel=error || return 1
    fi
}

# Autobahn|Testsuite is Python 2 code: use pyenv's 2.7.18 when there is one.
setup_autobahn() {
    local py2="" root dir="$TARGET_DIR/autobahn-py"
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null || true)"
        if [ -n "$root" ] && [ -x "$root/versions/2.7.18/bin/python" ]; then py2="$root/versions/2.7.18/bin/python"; fi
    fi
    if [ -z "$py2" ] && [ -x "$HOME/.pyenv/versions/2.7.18/bin/python" ]; then py2="$HOME/.pyenv/versions/2.7.18/bin/python"; fi
    if [ -z "$py2" ]; then
        say "no Python 2.7 found: the Autobahn|Testsuite part is skipped"
        export AUTOBAHN_PYTHON=/nonexistent
        return 0
    fi
    export AUTOBAHN_PYTHON="$py2" AUTOBAHN_PY="$dir"
    if [ ! -f "$dir/.installed" ]; then
        say "installing Autobahn|Testsuite for Python 2.7 into $dir"
        if ! "$py2" -m pip --version >/dev/null 2>&1; then
            quietly ensurepip "$py2" -m ensurepip || return 1
        fi
        rm -rf "$dir"
        quietly autobahn "$py2" -m pip install --disable-pip-version-check \
            -q --target "$dir" autobahntestsuite || return 1
        touch "$dir/.installed"
    fi
}

step() {
    local name="$1"
    shift
    if ! "$@"; then FAILED+=("$name"); fi
}

step "system packages" setup_system
step "python venv" setup_python
step "node modules" setup_node
step "autobahn install" setup_autobahn

say "cargo build --release --workspace"
if cargo build --release --workspace --quiet; then
    export ROOMCAST_BIN="$TARGET_DIR/release/roomcast"
else
    FAILED+=("cargo build")
    export ROOMCAST_BUILD_FAILED=1
fi

say "cargo test --release --workspace"
step "cargo test" cargo test --release --workspace --quiet

say "scripts/fuzz.sh (${FUZZ_SECONDS:-25}s per target)"
step "fuzz" scripts/fuzz.sh

if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '==> failed so far: %s\n' "$(IFS=,; echo "${FAILED[*]}")"
fi

say "pytest tests/e2e"
E2E=0
# shellcheck disable=SC2086
.venv/bin/python -m pytest tests/e2e ${PYTEST_ARGS:-} || E2E=$?

if [ "$E2E" -ne 0 ] || [ "${#FAILED[@]}" -gt 0 ]; then exit 1; fi
exit 0
