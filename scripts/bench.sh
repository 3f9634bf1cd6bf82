#!/usr/bin/env bash
# Every sandbox figure of one run, as a table (medians, ratios against a native baseline measured
# in the same run). `cargo bench -p rtcrm-sandbox --bench sandbox` runs the criterion version.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo bench --locked -p rtcrm --bench table
