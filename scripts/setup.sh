#!/usr/bin/env bash
# Installs what the whole test suite needs on a fresh Debian machine, and nothing twice:
# first what `rtcrm dev` needs (scripts/setup-dev.sh), then
#   lld-19 (wasm-ld), libclang-rt-19-dev-wasm32 (builtins)
#                                           the C filter SDK's examples (clang-19 --target=wasm32-wasi)
#   rustup target wasm32-unknown-unknown    the Rust filter SDK's examples
#   openssl                                 the test CA of the SASL/TLS tests
#   chromium                                the console's browser test (headless, /usr/bin/chromium)
# Java 17 and Maven (for the real Kafka broker of the integration tests) and Node.js 20+ with npm
# (for the console's browser test) are checked, not installed, and so is Go 1.24+ (the Go filter SDK:
# //go:wasmexport; Debian bookworm's golang is older).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-dev.sh

missing=()
command -v wasm-ld-19 >/dev/null 2>&1 || missing+=(lld-19)
[ -f /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a ] || missing+=(libclang-rt-19-dev-wasm32)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "setup: adding the Rust target wasm32-unknown-unknown" >&2
    rustup target add wasm32-unknown-unknown
fi

if ! go_version=$(go env GOVERSION 2>/dev/null) || ! printf '%s\n' go1.24 "$go_version" | sort -V -C; then
    echo "setup: Go 1.24 or later not found (the Go filter SDK needs //go:wasmexport): https://go.dev/dl/" >&2
    exit 1
fi

for tool in java mvn; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup: $tool not found (the Kafka integration tests need Java 17 and Maven)" >&2; exit 1; }
done
for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "setup: $tool not found (the console's browser test needs Node.js 20+ and npm)" >&2; exit 1; }
done
