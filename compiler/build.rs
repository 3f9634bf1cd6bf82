//! Builds the JavaScript runtime plugin (`compiler/runtime`, a Javy plugin) for `wasm32-wasip1`
//! with a nested cargo run, using Debian's clang and wasi-libc (no wasi-sdk download), and hands
//! the `.wasm` to this crate through `OUT_DIR`.
//!
//! Needs: `rustup target add wasm32-wasip1` and `apt-get install clang-19 llvm-19 wasi-libc`
//! (`scripts/setup.sh` does both). Without them the build stops here with that instruction.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip1";
const WASI_INCLUDE: &str = "/usr/include/wasm32-wasi";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let runtime_dir = manifest_dir.join("runtime");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for path in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", runtime_dir.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=RTCRM_CLANG");

    let clang = env::var("RTCRM_CLANG").unwrap_or_else(|_| "clang-19".into());
    let ar = clang.replace("clang", "llvm-ar");
    check_prerequisites(&clang, &ar);

    // One target directory for the nested build, next to the workspace's, so it is reused across
    // `cargo clean -p` and profiles.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.parent().unwrap().join("target"))
        .join("js-runtime");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let flags = format!("-nostdlibinc -isystem {WASI_INCLUDE}");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&runtime_dir)
        .args(["build", "--release", "--locked", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // Do not inherit the outer build's flags: they are for the host target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("RQUICKJS_SYS_NO_WASI_SDK", "1")
        .env("CC_wasm32_wasip1", &clang)
        .env("AR_wasm32_wasip1", &ar)
        .env("CFLAGS_wasm32_wasip1", &flags)
        .env("BINDGEN_EXTRA_CLANG_ARGS_wasm32_wasip1", &flags);
    let status = cmd.status().expect("cargo runs");
    if !status.success() {
        panic!("building the JavaScript runtime plugin (compiler/runtime) for {TARGET} failed; see the output above");
    }
    let wasm = target_dir.join(TARGET).join("release").join("rtcrm_js_runtime.wasm");
    std::fs::copy(&wasm, out_dir.join("rtcrm_js_runtime.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", wasm.display()));
}

fn check_prerequisites(clang: &str, ar: &str) {
    let mut missing = Vec::new();
    for tool in [clang, ar] {
        if Command::new(tool).arg("--version").output().is_err() {
            missing.push(format!("`{tool}` (apt-get install clang-19 llvm-19)"));
        }
    }
    if !Path::new(WASI_INCLUDE).join("stdlib.h").exists() {
        missing.push(format!("wasi-libc headers in {WASI_INCLUDE} (apt-get install wasi-libc)"));
    }
    let sysroot = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot {
        if !sysroot.join("lib/rustlib").join(TARGET).exists() {
            missing.push(format!("the Rust target {TARGET} (rustup target add {TARGET})"));
        }
    }
    if !missing.is_empty() {
        panic!(
            "cannot build the JavaScript runtime plugin; missing: {}. Run scripts/setup.sh, which installs them.",
            missing.join(", ")
        );
    }
}
