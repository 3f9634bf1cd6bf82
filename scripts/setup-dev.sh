#!/usr/bin/env bash
# Installs what building and running `rtcrm dev` needs on a fresh Debian machine that has Rust
# (rustup) and a C compiler, and nothing twice (the README's first command runs it):
#   clang-19, llvm-19 (llvm-ar), wasi-libc  the JS runtime plugin (QuickJS built for wasm32-wasip1)
#   rustup target wasm32-wasip1             the JS runtime plugin
#   make                                    librdkafka's bundled build (rdkafka-sys)
#   pkg-config, libssl-dev                  TLS and SASL for real clusters (rdkafka's ssl feature)
#   zlib1g-dev                              gzip-compressed Kafka records
#   kcat, curl                              the commands `rtcrm dev` prints
# The whole test suite needs more: scripts/setup.sh installs that (and runs this first).
set -euo pipefail

command -v cargo >/dev/null 2>&1 || { echo "setup-dev: cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing_cc=1

missing=()
[[ -z ${missing_cc:-} ]] || missing+=(gcc libc6-dev)
command -v clang-19 >/dev/null 2>&1 || missing+=(clang-19)
command -v llvm-ar-19 >/dev/null 2>&1 || missing+=(llvm-19)
[ -f /usr/include/wasm32-wasi/stdlib.h ] || missing+=(wasi-libc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup-dev: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    echo "setup-dev: adding the Rust target wasm32-wasip1" >&2
    rustup target add wasm32-wasip1
fi
