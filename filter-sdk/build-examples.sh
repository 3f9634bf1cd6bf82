#!/usr/bin/env bash
# Builds every example filter module from source (no .wasm is committed) into OUT_DIR:
#
#   OUT_DIR/rust/<scenario>.wasm         examples/filters/rust/<scenario>, wasm32-unknown-unknown
#   OUT_DIR/rust-wasip1/<scenario>.wasm  the same crates, wasm32-wasip1
#   OUT_DIR/c/<scenario>.wasm            examples/filters/c/<scenario>.c, clang-19 --target=wasm32-wasi
#   OUT_DIR/go/<scenario>.wasm           examples/filters/go/<scenario>, GOOS=wasip1 GOARCH=wasm, c-shared
#
# Usage: filter-sdk/build-examples.sh OUT_DIR   (e.g. target/filter-examples)
# Needs (scripts/setup.sh installs them): Rust targets wasm32-unknown-unknown and wasm32-wasip1;
# clang-19, lld-19 (wasm-ld), libclang-rt-19-dev-wasm32 (builtins) and wasi-libc; Go >= 1.24.
# Environment: RTCRM_CLANG (default clang-19), RTCRM_EXAMPLES_CARGO_TARGET_DIR (default
# target/filter-examples-cargo: its own directory, so a nested run from `cargo test` never waits
# for the outer build's lock).
set -euo pipefail

out=${1:?usage: $0 OUT_DIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
examples=$root/examples/filters
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/rust" "$out/rust-wasip1" "$out/c" "$out/go"
mkdir -p "$out/rust" "$out/rust-wasip1" "$out/c" "$out/go"

die() { echo "build-examples: $*" >&2; exit 1; }

# ---- Rust: one cargo run for both targets -------------------------------------------------------
cargo_target=${RTCRM_EXAMPLES_CARGO_TARGET_DIR:-$root/target/filter-examples-cargo}
for t in wasm32-unknown-unknown wasm32-wasip1; do
    rustup target list --installed 2>/dev/null | grep -qx "$t" || die "Rust target $t missing: rustup target add $t"
done
# Flags meant for the host build (e.g. -C target-cpu=native) must not reach the wasm builds.
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR -u RUSTC_WORKSPACE_WRAPPER \
    cargo build --release --quiet --manifest-path "$examples/rust/Cargo.toml" --target-dir "$cargo_target" \
    --target wasm32-unknown-unknown --target wasm32-wasip1
for dir in "$examples"/rust/*/; do
    scenario=$(basename "$dir")
    crate=${scenario//-/_}
    cp "$cargo_target/wasm32-unknown-unknown/release/$crate.wasm" "$out/rust/$scenario.wasm"
    cp "$cargo_target/wasm32-wasip1/release/$crate.wasm" "$out/rust-wasip1/$scenario.wasm"
done

# ---- C: the single header, wasi-libc from Debian, a WASI reactor ----------------------------------
clang=${RTCRM_CLANG:-clang-19}
command -v "$clang" >/dev/null || die "$clang not found: apt-get install clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc"
[ -f /usr/include/wasm32-wasi/stdlib.h ] || die "wasi-libc missing: apt-get install wasi-libc"
for c in "$examples"/c/*.c; do
    scenario=$(basename "$c" .c)
    # --sysroot=/usr finds crt1-reactor.o and libc.a in /usr/lib/wasm32-wasi; -nostdlibinc keeps
    # glibc's /usr/include out, -isystem puts wasi-libc's headers in.
    "$clang" --target=wasm32-wasi --sysroot=/usr -nostdlibinc -isystem /usr/include/wasm32-wasi \
        -I "$root/filter-sdk/c" -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wl,--strip-all \
        -o "$out/c/$scenario.wasm" "$c" \
        || die "$c failed to build (wasm-ld needs lld-19, the builtins libclang-rt-19-dev-wasm32)"
done

# ---- Go: a c-shared build is a WASI reactor exporting _initialize ----------------------------------
command -v go >/dev/null || die "go not found (Go >= 1.24 for //go:wasmexport)"
for dir in "$examples"/go/*/; do
    scenario=$(basename "$dir")
    (cd "$dir" && GOTOOLCHAIN=local GOWORK=off GOOS=wasip1 GOARCH=wasm \
        go build -buildmode=c-shared -trimpath -ldflags='-s -w' -o "$out/go/$scenario.wasm" .)
done

# ---- Sizes --------------------------------------------------------------------------------------
for lang in rust rust-wasip1 c go; do
    for m in "$out/$lang"/*.wasm; do
        printf '%-12s %-20s %9d bytes\n' "$lang" "$(basename "$m" .wasm)" "$(stat -c %s "$m")"
    done
done
