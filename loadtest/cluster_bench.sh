#!/usr/bin/env bash
# Cluster benchmarks on one machine: three nodes, publish-to-deliver latency
# from the owner against from a non-owner; five nodes, memory per idle
# connection (90,000 in all) and fan-out per server core, against one node.
# The work is done by cluster_bench.py (standard library only); it writes
# docs/bench/results/cluster-latency.txt and cluster-scale.txt.
#
#   loadtest/cluster_bench.sh                  # about 5 minutes
#   loadtest/cluster_bench.sh --quick          # short; results in the --out directory
#   loadtest/cluster_bench.sh --help           # every option
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec python3 "$root/loadtest/cluster_bench.py" "$@"
