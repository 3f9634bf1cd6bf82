//! WASI preview 1 as a filter sees it: wasmtime-wasi without capabilities (no preopened
//! directories, environment, arguments or sockets), with the functions that could block or do
//! unbounded work replaced (`filter-sdk/ABI.md` §4 lists what each does):
//!
//! | function | in the sandbox |
//! | --- | --- |
//! | `poll_oneoff` | returns at once: every clock subscription has fired, stdin is readable at end of file, stdout/stderr are writable, other descriptors report `badf` |
//! | `fd_read` | stdin: end of file at once; other descriptors: `badf` |
//! | `fd_write` | stdout/stderr: captured (16 KiB per stream until forwarded to the log, the rest dropped but reported written); others: `badf` |
//! | `random_get` | the operating system's random bytes |
//!
//! Each of these charges the filter's fuel before it works: [`HOST_CALL_FUEL`] per call and
//! [`HOST_BYTE_FUEL`] per byte it reads, writes or produces (see `limits.rs`).

use crate::limits::{HOST_BYTE_FUEL, HOST_CALL_FUEL};
use crate::sandbox::FilterState;
use wasmtime::{Caller, Extern, Linker, Trap};

const WASI: &str = "wasi_snapshot_preview1";

// WASI preview 1 errno values.
const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;

/// Largest iovec count accepted (as Linux's `IOV_MAX`).
const MAX_IOVS: u32 = 1024;
/// Size of a `subscription` and of an `event` in guest memory.
const SUBSCRIPTION_BYTES: usize = 48;
const EVENT_BYTES: usize = 32;

/// Bytes a filter wrote to one stream and not yet forwarded to its log, capped.
pub(crate) struct CapturedOutput {
    buf: Vec<u8>,
    cap: usize,
}

impl CapturedOutput {
    /// Keeps at most `cap` unforwarded bytes; more is dropped.
    pub fn new(cap: usize) -> CapturedOutput {
        CapturedOutput { buf: Vec::new(), cap }
    }

    /// Bytes that can still be kept.
    fn room(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..n]);
    }

    /// Whether anything waits to be forwarded.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Takes the complete lines written so far (and a trailing partial line when `flush_all`, or
    /// when the buffer is full, so a filter cannot keep it full with one endless line).
    pub fn take_lines(&mut self, flush_all: bool) -> Vec<Vec<u8>> {
        let end = if flush_all || self.room() == 0 {
            self.buf.len()
        } else {
            self.buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        let taken: Vec<u8> = self.buf.drain(..end).collect();
        taken.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
    }
}

/// Subtracts the fuel for a host call that handles `bytes` bytes, before the work is done. With
/// too little fuel left, the call traps as out of fuel and does nothing.
pub(crate) fn charge(caller: &mut Caller<'_, FilterState>, bytes: u64) -> wasmtime::Result<()> {
    if !caller.data().fuel_metering {
        return Ok(());
    }
    let cost = HOST_CALL_FUEL.saturating_add(bytes.saturating_mul(HOST_BYTE_FUEL));
    let left = caller.get_fuel()?;
    if left < cost {
        caller.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    caller.set_fuel(left - cost)
}

/// The caller's memory: the instance's `memory` export.
fn memory(caller: &mut Caller<'_, FilterState>) -> Option<wasmtime::Memory> {
    if let Some(m) = caller.data().memory {
        return Some(m);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// `[ptr, ptr + len)` of guest memory, if it is in bounds.
pub(crate) fn guest_range(data: &[u8], ptr: u32, len: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len)?;
    (end <= data.len()).then_some(start..end)
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn write_u32(data: &mut [u8], at: u32, v: u32) -> bool {
    match guest_range(data, at, 4) {
        Some(r) => {
            data[r].copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

/// Replaces the WASI functions above in `linker` (which already holds wasmtime-wasi's).
pub(crate) fn shadow(linker: &mut Linker<FilterState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(WASI, "poll_oneoff", poll_oneoff)?;
    linker.func_wrap(WASI, "fd_read", fd_read)?;
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    linker.func_wrap(WASI, "random_get", random_get)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `poll_oneoff(in, out, nsubscriptions, nevents_out) -> errno`: never waits. Each subscription
/// yields one event at once.
fn poll_oneoff(mut caller: Caller<'_, FilterState>, subs: i32, events: i32, n: i32, nevents: i32) -> wasmtime::Result<i32> {
    let n = n as u32 as usize;
    charge(&mut caller, (n as u64).saturating_mul((SUBSCRIPTION_BYTES + EVENT_BYTES) as u64))?;
    if n == 0 {
        return Ok(INVAL);
    }
    let Some(memory) = memory(&mut caller) else { return Ok(FAULT) };
    let data = memory.data_mut(&mut caller);
    let (Some(subs), Some(events)) = (
        n.checked_mul(SUBSCRIPTION_BYTES).and_then(|len| guest_range(data, subs as u32, len)),
        n.checked_mul(EVENT_BYTES).and_then(|len| guest_range(data, events as u32, len)),
    ) else {
        return Ok(FAULT);
    };
    for i in 0..n {
        let sub = subs.start + i * SUBSCRIPTION_BYTES;
        let mut sub_bytes = [0u8; SUBSCRIPTION_BYTES];
        sub_bytes.copy_from_slice(&data[sub..sub + SUBSCRIPTION_BYTES]);
        let tag = sub_bytes[8];
        let payload_u32 = u32::from_le_bytes(sub_bytes[16..20].try_into().unwrap());
        // (error, type, nbytes, flags) of the event.
        let (error, kind, nbytes, flags): (u16, u8, u64, u16) = match tag {
            // Clock: any clock, any timeout — it has fired. Unknown clock ids are `inval`.
            0 => (if payload_u32 <= 3 { SUCCESS as u16 } else { INVAL as u16 }, 0, 0, 0),
            // fd_read: stdin is at end of file (readable, hung up).
            1 if payload_u32 == 0 => (SUCCESS as u16, 1, 0, 1),
            // fd_write: stdout and stderr always take more.
            2 if payload_u32 == 1 || payload_u32 == 2 => (SUCCESS as u16, 2, 16 * 1024, 0),
            1 | 2 => (BADF as u16, tag, 0, 0),
            _ => (INVAL as u16, tag, 0, 0),
        };
        let at = events.start + i * EVENT_BYTES;
        let event = &mut data[at..at + EVENT_BYTES];
        event.fill(0);
        event[0..8].copy_from_slice(&sub_bytes[0..8]); // userdata
        event[8..10].copy_from_slice(&error.to_le_bytes());
        event[10] = kind;
        event[16..24].copy_from_slice(&nbytes.to_le_bytes());
        event[24..26].copy_from_slice(&flags.to_le_bytes());
    }
    Ok(if write_u32(data, nevents as u32, n as u32) { SUCCESS } else { FAULT })
}

/// `fd_read(fd, iovs, iovs_len, nread_out) -> errno`: stdin is empty (end of file at once).
fn fd_read(mut caller: Caller<'_, FilterState>, fd: i32, _iovs: i32, _iovs_len: i32, nread: i32) -> wasmtime::Result<i32> {
    charge(&mut caller, 0)?;
    if fd != 0 {
        return Ok(BADF);
    }
    let Some(memory) = memory(&mut caller) else { return Ok(FAULT) };
    Ok(if write_u32(memory.data_mut(&mut caller), nread as u32, 0) { SUCCESS } else { FAULT })
}

/// `fd_write(fd, iovs, iovs_len, nwritten_out) -> errno`: stdout and stderr are captured (capped)
/// and reported fully written, so a filter never spins on a full stream.
fn fd_write(mut caller: Caller<'_, FilterState>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> wasmtime::Result<i32> {
    let count = iovs_len as u32;
    if !(fd == 1 || fd == 2) {
        charge(&mut caller, 0)?;
        return Ok(BADF);
    }
    if count > MAX_IOVS {
        charge(&mut caller, 0)?;
        return Ok(INVAL);
    }
    let room = {
        let state = caller.data();
        if fd == 1 { state.stdout.room() } else { state.stderr.room() }
    };
    // What will be read: the iovec array, then up to `room` bytes of the buffers.
    let Some(memory) = memory(&mut caller) else { return Ok(FAULT) };
    let mut spans: Vec<(u32, u32)> = Vec::with_capacity(count as usize);
    {
        let data = memory.data(&caller);
        for i in 0..count as usize {
            let at = iovs as u32 as usize + i * 8;
            let (Some(ptr), Some(len)) = (read_u32(data, at), read_u32(data, at + 4)) else { return Ok(FAULT) };
            if guest_range(data, ptr, len as usize).is_none() {
                return Ok(FAULT);
            }
            spans.push((ptr, len));
        }
    }
    let total: u64 = spans.iter().map(|&(_, len)| u64::from(len)).sum();
    let copied = total.min(room as u64);
    charge(&mut caller, 8 * u64::from(count) + copied)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let out = if fd == 1 { &mut state.stdout } else { &mut state.stderr };
    for &(ptr, len) in &spans {
        if out.room() == 0 {
            break;
        }
        out.push(&data[ptr as usize..ptr as usize + len as usize]);
    }
    let reported = u32::try_from(total).unwrap_or(u32::MAX);
    Ok(if write_u32(data, nwritten as u32, reported) { SUCCESS } else { FAULT })
}

/// `random_get(buf, len) -> errno`.
fn random_get(mut caller: Caller<'_, FilterState>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let len = len as u32 as usize;
    charge(&mut caller, len as u64)?;
    let Some(memory) = memory(&mut caller) else { return Ok(FAULT) };
    let data = memory.data_mut(&mut caller);
    let Some(range) = guest_range(data, buf as u32, len) else { return Ok(FAULT) };
    match getrandom::getrandom(&mut data[range]) {
        Ok(()) => Ok(SUCCESS),
        Err(e) => Err(wasmtime::Error::msg(format!("the host's random source failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_keeps_lines_up_to_its_cap() {
        let mut out = CapturedOutput::new(16);
        out.push(b"one\ntwo");
        assert_eq!(out.take_lines(false), vec![b"one".to_vec()]);
        out.push(b"\nthree and more than fits");
        assert_eq!(out.room(), 0);
        // Full: taken whole, so one endless line cannot keep the buffer full.
        assert_eq!(out.take_lines(false), vec![b"two".to_vec(), b"three and mo".to_vec()]);
        assert!(!out.has_pending());
    }
}
