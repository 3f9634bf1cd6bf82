#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (scripts/setup.sh), builds
# everything (the JS runtime plugin included), starts a real Apache Kafka broker on loopback
# (scripts/kafka/broker.sh, jars from Maven Central), runs every test, and stops the broker.
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
