#!/usr/bin/env bash
# The room core's figures for one or two roomcast binaries side by side in one
# run: the reactor's worst stall while 100 cold rooms load (`cold-rooms`) and
# the durable path with 100 and 1000 publishers (`durable`), each on a fresh
# server pinned to core 0 (--threads 1 --durability immediate) with the load
# generator on core 1. The work is done by stall_durable.py (standard library
# only); it prints the tables and where the logs and JSON are.
#
#   loadtest/stall_durable.sh --server before=/path/to/roomcast --server after=target/release/roomcast
#   loadtest/stall_durable.sh --server A=./roomcast --loadtest ./roomcast-loadtest --rounds 3
#   loadtest/stall_durable.sh --help     # every option
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec python3 "$root/loadtest/stall_durable.py" "$@"
