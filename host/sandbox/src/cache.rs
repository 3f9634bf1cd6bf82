//! The on-disk cache of compiled modules (spec §8): the JS runtime and every Wasm filter module,
//! compiled once and loaded in milliseconds at the next start.
//!
//! # Where, and who may write it
//! The cache lives in one directory that only the current user can write: it is created with
//! mode 0700, opened with `O_NOFOLLOW | O_DIRECTORY` (a symlink is refused), and used only when
//! its owner is the effective user. A directory of ours that others could write (group or world
//! bits set) is tightened to 0700 and emptied, since anything in it may have been planted. A
//! directory owned by someone else is refused, and the sandbox runs from memory (it compiles at
//! every start) rather than fall back to a shared location. Every file is then opened relative to
//! that directory's descriptor, so renaming a parent afterwards cannot swap the directory.
//!
//! # What a file holds
//! `<kind>-<SHA-256 of the input>-<engine compatibility hash>.cwasm`: a magic line, the SHA-256
//! of the file's name followed by the artifact, and the artifact (`Module::serialize` output).
//! The name carries everything the artifact depends on (its input and wasmtime's version and
//! configuration), and the digest binds the artifact to that name: a truncated, torn or corrupted
//! file, or one copied under another module's name, fails the check, is deleted, and the module
//! is compiled again. Only verified bytes reach [`Module::deserialize`].
//!
//! The digest is not a signature: whoever can write files as this user can also run code as this
//! user, so the directory's ownership and mode are the trust boundary (see
//! [`ModuleCache::load`]'s `# Safety` argument).

use crate::error::SandboxError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::{Engine, Module};

/// First bytes of every cache file.
const MAGIC: &[u8; 16] = b"rtcrm-cwasm-v1\n\0";
/// Largest cache file read back (a compiled 8 MiB module is well below).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The default cache directory: `$RTCRM_CACHE_DIR`, else `$XDG_CACHE_HOME/rtcrm`, else
/// `$HOME/.cache/rtcrm`; `None` when none is set (the sandbox then compiles in memory: it never
/// falls back to a shared directory such as `/tmp`).
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`default_cache_dir`] for the environment `var`.
fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let nonempty = |name| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    nonempty("RTCRM_CACHE_DIR")
        .or_else(|| nonempty("XDG_CACHE_HOME").map(|d| d.join("rtcrm")))
        .or_else(|| nonempty("HOME").map(|d| d.join(".cache").join("rtcrm")))
}

/// What the cache did since the sandbox started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules loaded from a verified file.
    pub hits: u64,
    /// Modules not in the cache (compiled).
    pub misses: u64,
    /// Files that failed verification (deleted; the module was compiled again).
    pub rejected: u64,
    /// Files written.
    pub writes: u64,
}

/// A private directory of verified compiled modules.
pub(crate) struct ModuleCache {
    dir: OwnedFd,
    path: PathBuf,
    engine_hash: String,
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    writes: AtomicU64,
    tmp_counter: AtomicU64,
}

/// Why a directory was not used as the cache.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheRefused {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is a symbolic link or not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is owned by uid {owner}, not by this process's user (uid {me})")]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
}

impl ModuleCache {
    /// Opens `path` as the cache, creating it (mode 0700) when missing. See the module doc for
    /// what is refused and what is repaired.
    pub fn open(path: &Path, engine: &Engine) -> Result<ModuleCache, CacheRefused> {
        let io = |source: std::io::Error| CacheRefused::Io { path: path.to_owned(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match rustix::fs::mkdir(path, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e.into())),
        }
        let dir = match rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(CacheRefused::NotADirectory { path: path.to_owned() })
            }
            Err(e) => return Err(io(e.into())),
        };
        let stat = rustix::fs::fstat(&dir).map_err(|e| io(e.into()))?;
        let me = rustix::process::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(CacheRefused::NotOwned { path: path.to_owned(), owner: stat.st_uid, me });
        }
        if stat.st_mode & 0o077 != 0 {
            // Ours, but others could write it: close it to them first, then drop whatever they
            // may have put in it.
            rustix::fs::fchmod(&dir, Mode::RWXU).map_err(|e| io(e.into()))?;
            let removed = purge(&dir).map_err(|e| io(e.into()))?;
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", stat.st_mode & 0o777),
                removed,
                "the module cache directory was accessible to other users; it is now mode 0700 and its files were removed"
            );
        }
        Ok(ModuleCache {
            dir,
            path: path.to_owned(),
            engine_hash: engine_hash(engine),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name for a module of `kind` whose input has SHA-256 `input_sha256` (hex).
    pub fn file_name(&self, kind: &str, input_sha256: &str) -> String {
        format!("{kind}-{input_sha256}-{}.cwasm", self.engine_hash)
    }

    /// Loads the module cached under `name`, if a file is there and passes verification. A file
    /// that fails is deleted (and counted in [`CacheStats::rejected`]).
    ///
    /// # Safety
    /// Not `unsafe` to call, but this is where the cache's one `unsafe` lives:
    /// [`Module::deserialize`] runs the machine code in its input, so it must only see bytes that
    /// `Module::serialize` of this wasmtime produced. The argument that it does:
    /// 1. the file was read from the directory opened in [`ModuleCache::open`], which only this
    ///    user can write (owner checked, mode 0700, no symlink, opened by descriptor) — a file in
    ///    it was written by this program or by someone who can already run code as this user;
    /// 2. the file is read once into memory and verified there (no second read after the check);
    /// 3. its digest binds the artifact to its name, so a file damaged on disk, cut short by a
    ///    crash, or copied under another module's name is refused before deserialization;
    /// 4. wasmtime itself refuses an artifact of another version or configuration (the name
    ///    carries the engine's compatibility hash as well).
    pub fn load(&self, engine: &Engine, name: &str) -> Option<Module> {
        let bytes = match self.read(name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                tracing::warn!(file = name, error = %e, "reading the module cache failed; compiling instead");
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let Some(artifact) = verified(name, &bytes) else {
            self.reject(name, "its digest does not match (damaged, truncated or not written for this module)");
            return None;
        };
        // SAFETY: see this function's `# Safety` section: `artifact` is the verified content of a
        // file in a directory only this user can write, produced by `Module::serialize`.
        match unsafe { Module::deserialize(engine, artifact) } {
            Ok(module) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(module)
            }
            Err(e) => {
                self.reject(name, &format!("wasmtime refused it: {e}"));
                None
            }
        }
    }

    /// Stores `artifact` (from `Module::serialize`) under `name`, atomically (a private temporary
    /// file, then a rename).
    pub fn store(&self, name: &str, artifact: &[u8]) -> Result<(), SandboxError> {
        let tmp = format!(".tmp-{}-{}-{name}", std::process::id(), self.tmp_counter.fetch_add(1, Ordering::Relaxed));
        let err = |source: std::io::Error| SandboxError::Cache { path: self.path.join(name), source };
        let fd = rustix::fs::openat(
            &self.dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| err(e.into()))?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(MAGIC)
            .and_then(|()| file.write_all(&digest(name, artifact)))
            .and_then(|()| file.write_all(artifact));
        drop(file);
        let renamed = written.and_then(|()| rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, name).map_err(Into::into));
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            return Err(err(e));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// The whole file `name`, or `None` when there is none. Refuses anything but a regular file
    /// of ours.
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        let fd = match rustix::fs::openat(&self.dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
            || stat.st_uid != rustix::process::geteuid().as_raw()
            || stat.st_size as u64 > MAX_FILE_BYTES
        {
            return Err(std::io::Error::other("not a regular file of this user within the size limit"));
        }
        let mut bytes = Vec::with_capacity(stat.st_size as usize);
        std::fs::File::from(fd).take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    fn reject(&self, name: &str, why: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(file = %self.path.join(name).display(), "cached module refused: {why}; compiling it again");
        let _ = rustix::fs::unlinkat(&self.dir, name, AtFlags::empty());
    }
}

/// The artifact in a cache file's `bytes`, if its magic and digest check out for `name`.
fn verified<'a>(name: &str, bytes: &'a [u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (stored, artifact) = rest.split_at(32);
    (digest(name, artifact).as_slice() == stored).then_some(artifact)
}

/// SHA-256 of the file name (its length first), then the artifact.
fn digest(name: &str, artifact: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(artifact);
    h.finalize().into()
}

/// A short stable digest of the engine's compatibility hash (wasmtime version, target, and the
/// configuration an artifact depends on, such as fuel metering).
fn engine_hash(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

/// A [`std::hash::Hasher`] that feeds SHA-256, so the engine's hash is stable across processes
/// and Rust versions (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 state is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Removes every entry but subdirectories from `dir`; returns how many were removed.
fn purge(dir: &OwnedFd) -> rustix::io::Result<usize> {
    let mut removed = 0;
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." || entry.file_type() == FileType::Directory {
            continue;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => removed += 1,
            // A subdirectory on a file system that does not report entry types.
            Err(rustix::io::Errno::ISDIR | rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_is_private_to_the_user_or_none_never_a_shared_one() {
        let env = |vars: &'static [(&'static str, &'static str)]| move |name: &str| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| std::ffi::OsString::from(v))
        };
        assert_eq!(cache_dir_from(env(&[])), None, "no fallback to /tmp");
        assert_eq!(cache_dir_from(env(&[("HOME", "")])), None);
        assert_eq!(cache_dir_from(env(&[("HOME", "/home/rt")])), Some(PathBuf::from("/home/rt/.cache/rtcrm")));
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/home/rt"), ("XDG_CACHE_HOME", "/var/cache/rt")])),
            Some(PathBuf::from("/var/cache/rt/rtcrm"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/home/rt"), ("RTCRM_CACHE_DIR", "/srv/rtcrm")])),
            Some(PathBuf::from("/srv/rtcrm"))
        );
    }

    #[test]
    fn a_file_verifies_only_under_its_own_name() {
        let artifact = b"pretend machine code";
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&digest("a.cwasm", artifact));
        file.extend_from_slice(artifact);
        assert_eq!(verified("a.cwasm", &file), Some(&artifact[..]));
        assert_eq!(verified("b.cwasm", &file), None, "copied under another name");
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verified("a.cwasm", &flipped), None, "one bit changed");
        assert_eq!(verified("a.cwasm", &file[..file.len() - 1]), None, "truncated");
        assert_eq!(verified("a.cwasm", &file[..20]), None);
    }
}
