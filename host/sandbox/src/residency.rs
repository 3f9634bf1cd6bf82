//! Resident memory of a filter instance: only the pages it touches.
//!
//! Every instance's linear memory maps the module's initial memory image copy-on-write (wasmtime's
//! `memory_init_cow`): a page the instance only reads stays the one shared physical copy, a page
//! it writes becomes its own. On a read fault in such a file-backed mapping Linux maps not just
//! the page but up to 15 neighbours that are in the page cache ("fault-around",
//! `fault_around_bytes`, 64 KiB): cheap for one process mapping a file, but here it means that
//! *every* instance maps nearly the whole image. The JS runtime's image is 65 pages (the top of
//! the shadow stack, QuickJS's static data and its pre-initialised heap, 260 KiB), of which an
//! instance reads 7 and writes 13 (load plus evaluations, `benches/instances.rs`); with
//! fault-around all 65 count in its RSS, about 282 KiB per instance with the host-side
//! structures, instead of about 100 KiB. (PSS, which divides shared pages among their mappings,
//! is the same either way; RSS is what limits and the e2e bench see.)
//!
//! Linux disables fault-around for a mapping registered with a userfaultfd in write-protect
//! mode. So each instance's linear memory is registered, right after instantiation and before
//! any of its code runs, with one process-wide userfaultfd in write-protect mode, with
//! `UFFD_FEATURE_WP_ASYNC`, and no page is ever write-protected: no fault is ever delivered to
//! user space (with `WP_ASYNC` the kernel would resolve one by itself), so nothing waits on the
//! descriptor and nothing reads it; the registration only switches fault-around off for those
//! pages. Registering again (an instance reusing a pooled slot) changes nothing. The descriptor
//! is created with `UFFD_USER_MODE_ONLY`, which Linux grants unprivileged processes even when
//! `vm.unprivileged_userfaultfd` is 0.
//!
//! The registration is one `ioctl` per instantiation; like wasmtime's own `mmap` and `mprotect`
//! of a new memory it takes the process's memory-map lock for a moment.
//!
//! It needs Linux 6.7 or later (`WP_ASYNC`). Where userfaultfd is unavailable (an older kernel,
//! a seccomp profile that forbids it, as Docker's default one does) nothing is registered and
//! instances are as large as with fault-around; [`status`] says which, and the sandbox logs it
//! once. Memory an instance grows is anonymous, for which Linux never faults around.

use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::ioctl::{opcode, Opcode, Updater};
use std::sync::OnceLock;

/// `UFFD_API`: the API version in `uffdio_api.api`.
const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: only faults raised in user mode are handled (and, as none are, none).
const UFFD_USER_MODE_ONLY: u32 = 1;
/// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): write-protect faults are resolved by the kernel.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFDIO_REGISTER_MODE_WP`.
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_API` = `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: Opcode = opcode::read_write::<UffdioApi>(0xAA, 0x3F);
/// `UFFDIO_REGISTER` = `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: Opcode = opcode::read_write::<UffdioRegister>(0xAA, 0x00);

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register` (its `range` inlined).
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// Whether instances keep to the pages they touch, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residency {
    /// Fault-around is off for instance memories: an instance's RSS is the pages it touches.
    TouchedPagesOnly,
    /// Fault-around is left on (by configuration, or because userfaultfd is unavailable: the
    /// reason); each instance maps nearly all of its module's memory image.
    FaultAround(String),
}

/// Resident memory (RSS) one live JavaScript filter instance adds when instances keep to their
/// touched pages ([`Residency::TouchedPagesOnly`]), after its first evaluations (more do not add
/// pages): ~7 pages of its memory image read, ~13 written, and the host's structures for it
/// (28–34 KiB, most of it presumably the instance's `VMContext`). Measured with
/// `benches/instances.rs` over 1,000 and 10,000 instances (`docs/performance.md`); checked by
/// `tests/footprint.rs`.
pub const JS_INSTANCE_RSS_BYTES: usize = 104 * 1024;
/// The same with fault-around ([`Residency::FaultAround`]): the whole 260 KiB image is mapped.
pub const JS_INSTANCE_RSS_BYTES_WITH_FAULT_AROUND: usize = 288 * 1024;

static UFFD: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

fn uffd() -> &'static Result<OwnedFd, String> {
    UFFD.get_or_init(|| {
        let flags = rustix::mm::UserfaultfdFlags::CLOEXEC
            | rustix::mm::UserfaultfdFlags::NONBLOCK
            | rustix::mm::UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
        // SAFETY: creating the descriptor is safe; what it could do to this process's memory is
        // limited to the registrations below, which only disable fault-around (module doc).
        let fd = unsafe { rustix::mm::userfaultfd(flags) }.map_err(|e| format!("userfaultfd: {e}"))?;
        let mut api = UffdioApi { api: UFFD_API, features: UFFD_FEATURE_WP_ASYNC, ioctls: 0 };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which `api` is.
        unsafe { rustix::ioctl::ioctl(&fd, Updater::<UFFDIO_API, UffdioApi>::new(&mut api)) }
            .map_err(|e| format!("userfaultfd without asynchronous write protection (Linux 6.7 or later): {e}"))?;
        Ok(fd)
    })
}

/// Whether the process can keep instances to their touched pages (opens the descriptor once).
pub(crate) fn status() -> Residency {
    match uffd() {
        Ok(_) => Residency::TouchedPagesOnly,
        Err(reason) => Residency::FaultAround(reason.clone()),
    }
}

/// Switches fault-around off for `len` bytes of linear memory at `base` (page-aligned, as
/// wasmtime maps memories). Returns false when it could not (the memory keeps fault-around).
pub(crate) fn touched_pages_only(base: *mut u8, len: usize) -> bool {
    let Ok(fd) = uffd() else { return false };
    if len == 0 {
        return true;
    }
    let mut register = UffdioRegister { start: base as u64, len: len as u64, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`. The range is an
    // instance's own accessible linear memory; registering it in write-protect mode without ever
    // write-protecting a page changes no access to it (module doc).
    let result = unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_REGISTER, UffdioRegister>::new(&mut register)) };
    match result {
        Ok(()) => true,
        Err(e) => {
            warn_once(e);
            false
        }
    }
}

fn warn_once(e: Errno) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(error = %e, "registering a filter instance's memory with userfaultfd failed; such instances keep Linux's fault-around and a larger RSS");
    });
}
