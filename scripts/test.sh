#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (scripts/setup.sh), builds
# everything (the JS runtime plugin included), starts a real Apache Kafka broker on loopback
# (scripts/kafka/broker.sh, jars from Maven Central), runs every test, and stops the broker; then
# the console's end-to-end test in headless Chromium (tests/browser, playwright-core from npm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo test --release --workspace --locked --no-run

kafka_dir="$(pwd)/target/kafka-test"
bash scripts/kafka/broker.sh stop "$kafka_dir" >/dev/null 2>&1 || true
rm -rf "$kafka_dir"
trap 'bash scripts/kafka/broker.sh stop "$kafka_dir" >/dev/null 2>&1 || true' EXIT
RTCRM_TEST_BOOTSTRAP="$(bash scripts/kafka/broker.sh start "$kafka_dir" | tail -n 1)"
export RTCRM_TEST_BOOTSTRAP
echo "test: Kafka broker at $RTCRM_TEST_BOOTSTRAP" >&2

cargo test --release --workspace --locked

# The console in a real browser: Debian's headless Chromium driven by playwright-core.
[ -x /usr/bin/chromium ] || { echo "test: /usr/bin/chromium is missing (scripts/setup.sh installs it)" >&2; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
[ "$node_major" -ge 20 ] || { echo "test: Node.js 20 or later is needed for the browser test (found: $(node --version 2>/dev/null || echo none))" >&2; exit 1; }
# `cargo test --workspace` built target/release/rtcrm (the integration tests ran it); building it
# again with `-p rtcrm` would unify features differently and rebuild every dependency.
[ -x target/release/rtcrm ] || { echo "test: target/release/rtcrm is missing after cargo test" >&2; exit 1; }
(cd tests/browser && npm ci --no-audit --no-fund)
RTCRM_BIN="$(pwd)/target/release/rtcrm" node --test tests/browser/console.test.mjs
