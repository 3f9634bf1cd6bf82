//! The compiled-module cache (spec §8, issue 11): a second load hits it; a tampered or swapped
//! file is detected and rebuilt, never executed; the directory is private to the user or not used.

use crate::{abi_module, event, SEED_EVENT, SEED_FILTER};
use rtcrm_sandbox::{CompiledFilter, Sandbox, SandboxConfig};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory path for one test (not created).
fn fresh_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir()
        .join(format!("rtcrm-cache-test-{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn sandbox_at(dir: &Path) -> Sandbox {
    Sandbox::new(SandboxConfig { cache_dir: Some(dir.to_owned()), ..SandboxConfig::default() }).expect("the sandbox starts")
}

/// A module that returns `verdict`.
fn returning(verdict: i32) -> Vec<u8> {
    abi_module("", "", &format!("(i32.const {verdict})"))
}

fn verdict(sb: &Sandbox, compiled: rtcrm_sandbox::CompiledWasm) -> bool {
    let mut f = sb.filter(&CompiledFilter::Wasm(compiled), "cached", sb.limits()).unwrap();
    f.eval(&event(SEED_EVENT)).unwrap().matched
}

/// The one cache file whose name starts with `prefix`.
fn file(dir: &Path, prefix: &str) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn wasm_file(dir: &Path, module: &[u8]) -> PathBuf {
    use sha2::Digest;
    file(dir, &format!("wasm-{}-", hex::encode(sha2::Sha256::digest(module))))
}

#[test]
fn a_second_load_hits_the_cache_and_a_tampered_file_is_rebuilt_not_run() {
    let dir = fresh_dir("tamper");
    let yes = returning(1);
    let first = sandbox_at(&dir);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "created private");
    let compiled = first.load_wasm(&yes).unwrap();
    assert!(!compiled.loaded_from_cache());
    assert!(verdict(&first, compiled));

    // A new process (a new sandbox): the runtime and the module come from the cache.
    let second = sandbox_at(&dir);
    assert!(second.cache_stats().unwrap().hits >= 1, "the JS runtime was loaded from the cache");
    let compiled = second.load_wasm(&yes).unwrap();
    assert!(compiled.loaded_from_cache(), "{:?}", second.cache_stats());
    assert!(verdict(&second, compiled));

    // One bit flipped in the artifact: detected, deleted, compiled again, written again.
    let path = wasm_file(&dir, &yes);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let before = second.cache_stats().unwrap();
    let compiled = second.load_wasm(&yes).unwrap();
    assert!(!compiled.loaded_from_cache());
    let after = second.cache_stats().unwrap();
    assert_eq!(after.rejected, before.rejected + 1);
    assert_eq!(after.writes, before.writes + 1);
    assert!(verdict(&second, compiled));
    assert!(second.load_wasm(&yes).unwrap().loaded_from_cache(), "the rebuilt file is good again");

    // Cut short (a crash while writing): the same.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(!second.load_wasm(&yes).unwrap().loaded_from_cache());
    assert_eq!(second.cache_stats().unwrap().rejected, after.rejected + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_file_copied_under_another_modules_name_is_not_executed() {
    let dir = fresh_dir("swap");
    let sb = sandbox_at(&dir);
    let (yes, no) = (returning(1), returning(0));
    assert!(verdict(&sb, sb.load_wasm(&yes).unwrap()));
    assert!(!verdict(&sb, sb.load_wasm(&no).unwrap()));
    // The "no" module's file replaced by the "yes" module's artifact: were it run, "no" would match.
    std::fs::copy(wasm_file(&dir, &yes), wasm_file(&dir, &no)).unwrap();
    let compiled = sb.load_wasm(&no).unwrap();
    assert!(!compiled.loaded_from_cache(), "refused: its digest is bound to the other name");
    assert!(!verdict(&sb, compiled), "the module's own code ran");
    assert_eq!(sb.cache_stats().unwrap().rejected, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tampered_js_runtime_artifact_is_rebuilt() {
    let dir = fresh_dir("runtime");
    drop(sandbox_at(&dir));
    let path = file(&dir, "js-runtime-");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let sb = sandbox_at(&dir);
    let stats = sb.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.rejected, stats.writes), (0, 1, 1), "{stats:?}");
    let compiled = sb.compile_js(SEED_FILTER).unwrap();
    let mut f = sb.js_filter(&compiled, "runtime", sb.limits()).unwrap();
    assert!(f.eval(&event(SEED_EVENT)).unwrap().matched);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_directory_others_can_write_is_closed_and_emptied() {
    let dir = fresh_dir("open");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = dir.join("wasm-0000-0000.cwasm");
    std::fs::write(&planted, b"planted by someone else").unwrap();
    let sb = sandbox_at(&dir);
    assert_eq!(sb.cache_dir(), Some(dir.as_path()));
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!planted.exists(), "whatever was in it may have been planted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlinked_or_foreign_cache_directory_is_not_used() {
    let target = fresh_dir("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = fresh_dir("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let sb = sandbox_at(&link);
    assert_eq!(sb.cache_dir(), None, "a symlink is refused");
    assert_eq!(sb.cache_stats(), None);
    let compiled = sb.compile_js(SEED_FILTER).unwrap();
    assert!(sb.js_filter(&compiled, "mem", sb.limits()).unwrap().eval(&event(SEED_EVENT)).unwrap().matched, "runs from memory");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing written through the link");

    // Owned by another user: refused. (As root, a directory given to `nobody`; otherwise `/`.)
    let foreign = if rustix_euid() == 0 {
        let dir = fresh_dir("foreign");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        dir
    } else {
        PathBuf::from("/")
    };
    assert_ne!(std::fs::metadata(&foreign).unwrap().uid(), rustix_euid());
    assert_eq!(sandbox_at(&foreign).cache_dir(), None);
    for d in [&target, &link, &foreign] {
        if d != Path::new("/") {
            let _ = std::fs::remove_file(d);
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn rustix_euid() -> u32 {
    // The tests' own uid, from a file this process just created.
    let probe = fresh_dir("uid");
    std::fs::write(&probe, b"").unwrap();
    let uid = std::fs::metadata(&probe).unwrap().uid();
    let _ = std::fs::remove_file(&probe);
    uid
}
