# Sourced by scripts/run.sh and scripts/test.sh: installs what the build and the
# tests need, only when it is missing. Quiet unless something goes wrong.

APT_UPDATED=0

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "need root to run: $*" >&2
        return 1
    fi
}

# apt_install PKG...: installs the packages not yet installed (one `apt-get update` per run).
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then return 0; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "apt-get not found; please install: ${missing[*]}" >&2
        return 1
    fi
    say "installing ${missing[*]}"
    local log
    log="$(mktemp)"
    if [ "$APT_UPDATED" -eq 0 ]; then
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            return 1
        fi
        APT_UPDATED=1
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# Build dependencies of the crate: a C compiler (aws-lc), cmake, pkg-config and OpenSSL's headers.
ensure_build_deps() {
    local want=()
    # cc for aws-lc; c++ for libFuzzer in the fuzz build.
    if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then want+=(build-essential); fi
    command -v cmake >/dev/null 2>&1 || want+=(cmake)
    command -v pkg-config >/dev/null 2>&1 || want+=(pkg-config)
    command -v git >/dev/null 2>&1 || want+=(git)
    # OpenSSL headers: webauthn-rs (passkeys) links OpenSSL, found through pkg-config.
    pkg-config --exists openssl 2>/dev/null || want+=(libssl-dev)
    if [ "${#want[@]}" -gt 0 ]; then apt_install "${want[@]}"; fi
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "cargo not found: install Rust (https://rustup.rs), then run this again" >&2
            return 1
        fi
    fi
}
