#!/usr/bin/env bash
# Per-player state benchmark of `rtcrm run` against a real Kafka broker (issue 12): a campaign
# with `cooldown` and `count` over N distinct players against the same campaign without controls
# (same run, alternating), the restore of the partition holding the N states (from the changelog,
# and from the local state), and their disk and RSS; prints one markdown table.
# Arguments go to the bench (tests/src/bin/state_bench.rs), e.g.
#   scripts/bench-state.sh                       # 1,000,000 players, 3 rounds
#   scripts/bench-state.sh --events 100000 --runs 1
#   scripts/bench-state.sh --bootstrap 127.0.0.1:9092   # an existing broker (else one is started)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p rtcrm -p rtcrm-integration-tests --bin rtcrm --bin state_bench
exec "${CARGO_TARGET_DIR:-target}/release/state_bench" "$@"
