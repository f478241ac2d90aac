//! DynamicLog's one precompiled uprobe program, driven by data.
//!
//! The agent attaches `dynlog_capture` at a traced function's entry and at each of its RET
//! instructions, each with its own attach cookie. The cookie selects a [`Plan`] in `DYNLOG_PLANS`; the
//! program interprets it with bounded loops (registers or stack words, pointer hops, reads of bounded
//! size) and sends one event to `DYNLOG_EVENTS`. Nothing is compiled per function: adding a probe is
//! writing a plan and attaching.
//!
//! Every read of user memory goes through `bpf_probe_read_user*`, which fails instead of faulting: a
//! nil pointer marks the slot with `status::FAULT`, never harms the traced program.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_pid_tgid,
    helpers::generated::{
        bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_probe_read_user_str,
    },
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_common::dynlog::{
    DATA_CAP, EventHeader, Loc, MAX_HOPS, MAX_PLANS, MAX_READ, MAX_SLOTS, Plan, Scratch, Slot,
    SlotRecord, counter, kind, plan_flags, reg, source, status,
};

#[map]
static DYNLOG_PLANS: HashMap<u64, Plan> = HashMap::with_max_entries(MAX_PLANS, 0);

#[map]
static DYNLOG_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static DYNLOG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
static DYNLOG_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Unread bytes in the ring at which the reader is woken at once.
const WAKEUP_BYTES: u64 = 256 * 1024;

const HEADER: usize = core::mem::size_of::<EventHeader>();
const RECORD: usize = core::mem::size_of::<SlotRecord>();

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = DYNLOG_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot; this program is its only writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Reads a u64 of user memory; None when it faults.
#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: the helper writes at most 8 bytes to `v` and never faults on a bad `addr`.
    let rc = unsafe {
        bpf_probe_read_user(
            (&mut v as *mut u64).cast(),
            8,
            addr as *const core::ffi::c_void,
        )
    };
    if rc == 0 { Some(v) } else { None }
}

/// Resolves a location; None when a read faulted.
#[inline(always)]
fn resolve(loc: &Loc, regs: &[u64; 32]) -> Option<u64> {
    let mut value = match loc.source {
        source::REG => regs[(loc.reg & 31) as usize],
        source::STACK => {
            read_u64(regs[reg::RSP as usize].wrapping_add(loc.stack_off as i64 as u64))?
        }
        _ => 0,
    };
    let n = loc.n_hops as usize;
    for i in 0..MAX_HOPS {
        if i >= n {
            break;
        }
        value = read_u64(value.wrapping_add(loc.hops[i] as i64 as u64))?;
    }
    Some(value)
}

/// Records one slot at `off` of `data`; returns the bytes used (0 when it did not fit).
#[inline(always)]
fn record(slot: &Slot, regs: &[u64; 32], data: *mut u8, off: usize) -> usize {
    if off > DATA_CAP - RECORD {
        return 0;
    }
    let off = off & (DATA_CAP - 1);
    let mut rec = SlotRecord::default();
    let max = (slot.max as usize).min(MAX_READ);
    let mut payload = 0usize;
    match resolve(&slot.ptr, regs) {
        None => rec.status |= status::FAULT,
        Some(value) => {
            rec.value = value;
            let value = value.wrapping_add(slot.addend as i64 as u64);
            let dest = data.wrapping_add(off + RECORD);
            match slot.kind {
                kind::BYTES => {
                    let len = match resolve(&slot.len, regs) {
                        Some(len) => len,
                        None => {
                            rec.status |= status::FAULT;
                            0
                        }
                    };
                    rec.value = len;
                    let len = len << (slot.len_shift & 7);
                    let mut n = if len > max as u64 { max } else { len as usize };
                    if n < len as usize || len > max as u64 {
                        rec.status |= status::TRUNCATED;
                    }
                    if off + RECORD + n > DATA_CAP {
                        rec.status |= status::NO_ROOM;
                        n = 0;
                    }
                    let n = n & (MAX_READ * 2 - 1);
                    if n > 0 && n <= MAX_READ {
                        // SAFETY: `dest..dest+n` lies inside the scratch buffer (off < DATA_CAP,
                        // n ≤ MAX_READ, and the buffer has MAX_READ + RECORD bytes of slack).
                        let rc = unsafe {
                            bpf_probe_read_user(
                                dest.cast(),
                                n as u32,
                                value as *const core::ffi::c_void,
                            )
                        };
                        if rc == 0 {
                            payload = n;
                        } else {
                            rec.status |= status::FAULT;
                        }
                    }
                }
                kind::MEMORY | kind::CSTR => {
                    let mut n = max;
                    if off + RECORD + n > DATA_CAP {
                        rec.status |= status::NO_ROOM;
                        n = 0;
                    }
                    let n = n & (MAX_READ * 2 - 1);
                    if n > 0 && n <= MAX_READ {
                        if slot.kind == kind::CSTR {
                            // SAFETY: as above; the helper stops at NUL or n bytes.
                            let rc = unsafe {
                                bpf_probe_read_user_str(
                                    dest.cast(),
                                    n as u32,
                                    value as *const core::ffi::c_void,
                                )
                            };
                            if rc > 0 {
                                // Drop the NUL; a string that filled the buffer may be cut.
                                payload = (rc as usize - 1) & (MAX_READ * 2 - 1);
                                if rc as usize == n {
                                    rec.status |= status::TRUNCATED;
                                }
                            } else {
                                rec.status |= status::FAULT;
                            }
                        } else {
                            // SAFETY: as above.
                            let rc = unsafe {
                                bpf_probe_read_user(
                                    dest.cast(),
                                    n as u32,
                                    value as *const core::ffi::c_void,
                                )
                            };
                            if rc == 0 {
                                payload = n;
                            } else {
                                rec.status |= status::FAULT;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    rec.len = payload as u32;
    // SAFETY: off ≤ DATA_CAP - RECORD, inside the scratch buffer; unaligned-safe write.
    unsafe { core::ptr::write_unaligned(data.wrapping_add(off).cast::<SlotRecord>(), rec) };
    RECORD + ((payload + 7) & !7)
}

#[uprobe]
pub fn dynlog_capture(ctx: ProbeContext) -> u32 {
    capture(ctx.as_ptr(), 0)
}

/// Returns of C, C++ and Rust functions (never Go: see the agent's `rets` module). At a uretprobe
/// the return address has been popped, so the frame depth is taken 8 bytes lower.
#[uretprobe]
pub fn dynlog_capture_return(ctx: RetProbeContext) -> u32 {
    capture(ctx.as_ptr(), 8)
}

#[inline(always)]
fn capture(ctx: *mut core::ffi::c_void, popped: u64) -> u32 {
    // SAFETY: reads the cookie the kernel stored for this attachment; the pointer is our context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: the value is only read, and plans are replaced whole by user space.
    let Some(plan) = (unsafe { DYNLOG_PLANS.get(&cookie) }) else {
        count(counter::NO_PLAN);
        return 0;
    };
    let Some(scratch) = DYNLOG_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch value is exclusively ours for this program run.
    let scratch: &mut Scratch = unsafe { &mut *scratch };
    // SAFETY: copies the 21 words of the uprobe's pt_regs (kernel memory) into the scratch buffer.
    let rc = unsafe {
        bpf_probe_read_kernel(
            scratch.regs.as_mut_ptr().cast(),
            (reg::COUNT * 8) as u32,
            ctx as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return 0;
    }
    let regs = &scratch.regs;
    let pid_tgid = bpf_get_current_pid_tgid();
    let rsp = regs[reg::RSP as usize].wrapping_sub(popped);
    let (goid, depth) = if plan.flags & plan_flags::GO != 0 {
        let g = regs[(plan.g_reg & 31) as usize];
        let goid = read_u64(g.wrapping_add(plan.goid_off as u64)).unwrap_or(0);
        let hi = read_u64(g.wrapping_add(plan.stack_hi_off as u64)).unwrap_or(0);
        (goid, hi.wrapping_sub(rsp))
    } else {
        (pid_tgid & 0xffff_ffff, 0u64.wrapping_sub(rsp))
    };
    let data = scratch.data.as_mut_ptr();
    let n_slots = plan.n_slots as usize;
    let mut off = 0usize;
    let mut recorded = 0u32;
    for i in 0..MAX_SLOTS {
        if i >= n_slots {
            break;
        }
        let used = record(&plan.slots[i], regs, data, off);
        if used == 0 {
            break;
        }
        off += used;
        recorded += 1;
    }
    if off > DATA_CAP {
        off = DATA_CAP;
    }
    scratch.header = EventHeader {
        cookie,
        // SAFETY: plain helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        goid,
        depth,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        data_len: off as u32,
        n_slots: recorded,
    };
    let size = HEADER + off;
    // SAFETY: header and data are contiguous in the repr(C) Scratch; size ≤ HEADER + DATA_CAP.
    let bytes =
        unsafe { core::slice::from_raw_parts((scratch as *const Scratch).cast::<u8>(), size) };
    // Waking the reader for every event would cost the traced program a context switch per call;
    // it polls every few milliseconds instead and is only woken when the ring fills up.
    let flags = if DYNLOG_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    if DYNLOG_EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count(counter::RING_FULL);
    }
    0
}

#[path = "../runtime.rs"]
mod runtime;
