#!/usr/bin/env bash
# End-to-end benchmark of `rtcrm run` against a real Kafka broker, with a plain Kafka
# consume→produce copier measured in the same run as the baseline; prints one markdown table.
# Arguments go to the bench (tests/src/bin/e2e_bench.rs), e.g.
#   scripts/bench-e2e.sh --events 50000 --campaigns 10 --rate 500 --latency-seconds 20
#   scripts/bench-e2e.sh --bootstrap 127.0.0.1:9092   # an existing broker (else one is started)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p rtcrm -p rtcrm-integration-tests --bin rtcrm --bin e2e_bench
exec "${CARGO_TARGET_DIR:-target}/release/e2e_bench" "$@"
