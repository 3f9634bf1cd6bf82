#!/usr/bin/env bash
# Benchmark of `rtcrm campaign backtest` against `rtcrm run` on a real Kafka broker: 1,000,000 (default)
# events pre-loaded on one topic, one campaign (the original filter) through `rtcrm run`, then
# backtested over the same topic; prints one markdown table (events/s of both and the ratio) and
# fails when the backtest's counts differ from the expected triggers. Arguments go to the bench
# (tests/src/bin/e2e_bench.rs --backtest), e.g.
#   scripts/bench-backtest.sh --events 200000
#   scripts/bench-backtest.sh --bootstrap 127.0.0.1:9092   # an existing broker (else one is started)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p rtcrm -p rtcrm-integration-tests --bin rtcrm --bin e2e_bench
exec "${CARGO_TARGET_DIR:-target}/release/e2e_bench" --backtest "$@"
