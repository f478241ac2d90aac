//! DynamicLog: the capture plan user space writes and the events the one precompiled uprobe program
//! (`node-agent-ebpf/src/dynamic_log`) sends back.
//!
//! Every attach point (a function entry or one of its RET instructions) carries an attach cookie; the
//! program looks the cookie up in [`names::PLANS_MAP`] and interprets the [`Plan`] with bounded loops:
//! for each [`Slot`] it resolves a [`Loc`] (a register or stack word, then a chain of "add offset and
//! read a u64" hops) and records either the value itself or bytes read from it. Events are an
//! [`EventHeader`] followed by `data_len` bytes: for each slot a [`SlotRecord`] and its payload,
//! padded to 8 bytes.

/// Slots per plan (columns may use several, e.g. a string is one slot, a struct in registers one per field).
pub const MAX_SLOTS: usize = 16;
/// Pointer hops per location (`a.b.c.d` through pointers).
pub const MAX_HOPS: usize = 8;
/// Bytes one slot may read (the upper bound of `maxStringBytes`).
pub const MAX_READ: usize = 4096;
/// Bytes of slot data one event may carry; a power of two (the program masks offsets with it).
pub const DATA_CAP: usize = 16384;

/// Where a [`Loc`] starts.
pub mod source {
    /// No value (0); used for the unused length location of a slot.
    pub const NONE: u8 = 0;
    /// A `pt_regs` word (see [`super::reg`]).
    pub const REG: u8 = 1;
    /// The u64 at `rsp + stack_off` (stack-passed arguments).
    pub const STACK: u8 = 2;
}

/// Word indexes into x86-64 `struct pt_regs` (what a uprobe sees; there are no XMM registers).
pub mod reg {
    pub const R15: u8 = 0;
    pub const R14: u8 = 1;
    pub const R13: u8 = 2;
    pub const R12: u8 = 3;
    pub const RBP: u8 = 4;
    pub const RBX: u8 = 5;
    pub const R11: u8 = 6;
    pub const R10: u8 = 7;
    pub const R9: u8 = 8;
    pub const R8: u8 = 9;
    pub const RAX: u8 = 10;
    pub const RCX: u8 = 11;
    pub const RDX: u8 = 12;
    pub const RSI: u8 = 13;
    pub const RDI: u8 = 14;
    pub const RIP: u8 = 16;
    pub const RSP: u8 = 19;
    /// Words in `struct pt_regs`.
    pub const COUNT: usize = 21;
}

/// What a slot records.
pub mod kind {
    /// The resolved value itself (8 bytes, no payload); user space truncates it to the type's width.
    pub const SCALAR: u8 = 1;
    /// `min(len, max)` bytes at the resolved address, `len` from the slot's length location
    /// (Go strings and slices). The record's `value` is the full length.
    pub const BYTES: u8 = 2;
    /// A NUL-terminated string of at most `max` bytes at the resolved address (C `char *`).
    pub const CSTR: u8 = 3;
    /// `max` bytes of memory at the resolved address (a struct or array, decoded in user space).
    pub const MEMORY: u8 = 4;
}

/// How the program identifies the calling frame; see [`Plan::flags`].
pub mod plan_flags {
    /// Go register ABI: `goid` is read from the `g` in `Plan::g_reg`, and the frame depth is
    /// `g.stack.hi - rsp` (stable when the runtime moves the goroutine's stack).
    pub const GO: u32 = 1;
}

/// Status bits of a [`SlotRecord`].
pub mod status {
    /// A hop or the final read faulted (nil pointer, unmapped memory); the value is meaningless.
    pub const FAULT: u32 = 1;
    /// Fewer bytes were kept than the value has.
    pub const TRUNCATED: u32 = 2;
    /// The event had no room left for this slot.
    pub const NO_ROOM: u32 = 4;
}

/// A value's location: a start (`source`) then `n_hops` times `value = *(u64 *)(value + hops[i])`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    /// One of [`source`].
    pub source: u8,
    /// `pt_regs` word for [`source::REG`].
    pub reg: u8,
    pub n_hops: u8,
    pub _pad: u8,
    /// Offset from `rsp` for [`source::STACK`].
    pub stack_off: i32,
    pub hops: [i32; MAX_HOPS],
}
const _: () = assert!(core::mem::size_of::<Loc>() == 8 + 4 * MAX_HOPS);

/// One recorded value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// One of [`kind`].
    pub kind: u8,
    /// BYTES: the length location counts elements of `1 << len_shift` bytes.
    pub len_shift: u8,
    /// Bytes to keep for BYTES, CSTR and MEMORY (≤ [`MAX_READ`]).
    pub max: u16,
    /// Added to the resolved address before reading (BYTES, CSTR, MEMORY).
    pub addend: i32,
    /// The value (SCALAR) or the address to read from.
    pub ptr: Loc,
    /// The length (BYTES only).
    pub len: Loc,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 8 + 2 * core::mem::size_of::<Loc>());

/// What to record at one attach point; the value of [`names::PLANS_MAP`], keyed by attach cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Bits of [`plan_flags`].
    pub flags: u32,
    pub n_slots: u32,
    /// `pt_regs` word holding the goroutine's `g` (GO plans).
    pub g_reg: u32,
    /// Offset of `goid` in `runtime.g` (GO plans).
    pub goid_off: u32,
    /// Offset of `stack.hi` in `runtime.g` (GO plans).
    pub stack_hi_off: u32,
    pub _pad: u32,
    pub slots: [Slot; MAX_SLOTS],
}
const _: () =
    assert!(core::mem::size_of::<Plan>() == 24 + MAX_SLOTS * core::mem::size_of::<Slot>());

impl Default for Plan {
    fn default() -> Self {
        Plan {
            flags: 0,
            n_slots: 0,
            g_reg: 0,
            goid_off: 0,
            stack_hi_off: 0,
            _pad: 0,
            slots: [Slot::default(); MAX_SLOTS],
        }
    }
}

/// Start of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// The attach cookie: which plan (and so which probe, function and site) fired.
    pub cookie: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Goroutine id (GO plans) or thread id.
    pub goid: u64,
    /// Frame depth, larger = deeper; equal at a function's entry and at its RET for the same call.
    pub depth: u64,
    pub tgid: u32,
    pub tid: u32,
    /// Bytes of slot records that follow.
    pub data_len: u32,
    /// Slots recorded.
    pub n_slots: u32,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 48);

/// Header of one slot's data inside an event; `len` payload bytes follow, padded to 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotRecord {
    /// SCALAR: the value; BYTES: the full length; CSTR and MEMORY: the address.
    pub value: u64,
    /// Payload bytes that follow.
    pub len: u32,
    /// Bits of [`status`].
    pub status: u32,
}
const _: () = assert!(core::mem::size_of::<SlotRecord>() == 16);

/// The per-CPU buffer the program builds an event in before copying `HEADER + data_len` bytes to
/// the ring. The slack after [`DATA_CAP`] lets the verifier see every read in bounds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub header: EventHeader,
    pub data: [u8; DATA_CAP + MAX_READ + 16],
    /// The registers of the current hit, copied once so slots can index them.
    pub regs: [u64; 32],
}

/// Names shared by the eBPF object and the loader.
pub mod names {
    /// Hash map: attach cookie (u64) → [`super::Plan`].
    pub const PLANS_MAP: &str = "DYNLOG_PLANS";
    /// Ring buffer of events.
    pub const EVENTS_MAP: &str = "DYNLOG_EVENTS";
    /// Per-CPU counter array: [`super::counter`] index → count.
    pub const COUNTERS_MAP: &str = "DYNLOG_COUNTERS";
    /// The uprobe program, attached at every entry and (Go) at every RET.
    pub const PROGRAM: &str = "dynlog_capture";
    /// The uretprobe program, for returns of C, C++ and Rust functions.
    pub const RETURN_PROGRAM: &str = "dynlog_capture_return";
}

/// Indexes of [`names::COUNTERS_MAP`].
pub mod counter {
    /// A hit whose cookie has no plan (a plan removed while still attached).
    pub const NO_PLAN: u32 = 0;
    /// An event lost because the ring buffer was full.
    pub const RING_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Plans kept at once (each probe uses one per attach site kind: entry, return).
pub const MAX_PLANS: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY (all four): repr(C), Copy, no implicit padding (sizes asserted above; explicit `_pad`
    // fields fill every gap) and every bit pattern of their integer fields is valid.
    unsafe impl aya::Pod for super::Loc {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::Plan {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SlotRecord {}
}
