#!/usr/bin/env bash
# Installs what building and testing rtcrm needs on a fresh Debian machine, and nothing twice:
#   clang-19, llvm-19 (llvm-ar), wasi-libc  the JS runtime plugin (QuickJS for wasm32-wasip1)
#   kcat                                    the README's examples and the integration tests
#   chromium                                the console's browser test (headless, /usr/bin/chromium)
#   rustup target wasm32-wasip1             the JS runtime plugin
#   lld-19 (wasm-ld), libclang-rt-19-dev-wasm32 (builtins)
#                                           the C filter SDK's examples (clang-19 --target=wasm32-wasi)
#   rustup targets wasm32-unknown-unknown, wasm32-wasip1
#                                           the Rust filter SDK's examples
# Java 17 and Maven (for the real Kafka broker of the integration tests) and Node.js 20+ with npm
# (for the console's browser test) are checked, not installed, and so is Go 1.24+ (the Go filter SDK:
# //go:wasmexport; Debian bookworm's golang is older).
set -euo pipefail

missing=()
command -v clang-19 >/dev/null 2>&1 || missing+=(clang-19)
command -v llvm-ar-19 >/dev/null 2>&1 || missing+=(llvm-19)
[ -f /usr/include/wasm32-wasi/stdlib.h ] || missing+=(wasi-libc)
command -v wasm-ld-19 >/dev/null 2>&1 || missing+=(lld-19)
[ -f /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a ] || missing+=(libclang-rt-19-dev-wasm32)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for target in wasm32-wasip1 wasm32-unknown-unknown; do
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "setup: adding the Rust target $target" >&2
        rustup target add "$target"
    fi
done

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
