//! Shared between the profiler's perf-event program (`node-agent-ebpf/src/profiler/main.rs`) and the
//! agent (`node-agent/src/probes/profiler/`).
//!
//! The program counts samples per [`StackKey`] in one of two buffers (`COUNTS_0`/`STACKS_0` or
//! `COUNTS_1`/`STACKS_1`); [`CONFIG_ACTIVE_BUFFER`] of the config array says which. User space flips
//! it each period, lets in-flight samples land, then drains and clears the other buffer, so no sample
//! is lost to the swap.

/// One counted sample class: a process and its user and kernel stacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Thread group id (the process id as user space sees it on the host).
    pub tgid: u32,
    /// Id in the buffer's stack map, or [`NO_STACK`] when the stack was not captured.
    pub user_stack_id: i32,
    /// Id in the buffer's stack map, or [`NO_STACK`] (a sample taken in user mode has no kernel stack).
    pub kernel_stack_id: i32,
    /// Explicit padding; always 0.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<StackKey>() == 16);
const _: () = assert!(core::mem::align_of::<StackKey>() == 4);

/// A stack id meaning "no stack".
pub const NO_STACK: i32 = -1;

/// Index in [`CONFIG_MAP`] of the buffer (0 or 1) samples go to.
pub const CONFIG_ACTIVE_BUFFER: u32 = 0;
/// Number of entries of [`CONFIG_MAP`].
pub const CONFIG_ENTRIES: u32 = 1;

/// Index in [`DROPS_MAP`] (per CPU, `u64`): a sample's key did not fit in the full counts map.
pub const DROP_MAP_FULL: u32 = 0;
/// Index in [`DROPS_MAP`]: the user stack could not be stored (stack map full or hash collision).
pub const DROP_USER_STACK: u32 = 1;
/// Index in [`DROPS_MAP`]: the kernel stack could not be stored.
pub const DROP_KERNEL_STACK: u32 = 2;
/// Number of entries of [`DROPS_MAP`].
pub const DROP_REASONS: u32 = 3;

/// Capacity of each counts map (distinct (tgid, stacks) per period).
pub const MAX_KEYS: u32 = 16384;
/// Capacity of each stack map (distinct stacks per period).
pub const MAX_STACKS: u32 = 16384;

/// The perf-event program.
pub const PROGRAM: &str = "profiler_sample";
/// `Array<u32>` of [`CONFIG_ENTRIES`] settings.
pub const CONFIG_MAP: &str = "PROFILER_CONFIG";
/// `HashMap<u64, u8>`: cgroup v2 ids whose samples are kept.
pub const CGROUPS_MAP: &str = "PROFILER_CGROUPS";
/// `HashMap<u32, u8>`: tgids whose samples are kept (standalone / process targets).
pub const TGIDS_MAP: &str = "PROFILER_TGIDS";
/// `PerCpuArray<u64>` of [`DROP_REASONS`] drop counters.
pub const DROPS_MAP: &str = "PROFILER_DROPS";
/// `HashMap<StackKey, u64>` sample counts, one per buffer.
pub const COUNTS_MAPS: [&str; 2] = ["PROFILER_COUNTS_0", "PROFILER_COUNTS_1"];
/// `StackTrace` maps, one per buffer.
pub const STACKS_MAPS: [&str; 2] = ["PROFILER_STACKS_0", "PROFILER_STACKS_1"];

#[cfg(feature = "user")]
// SAFETY: StackKey is repr(C), Copy, has no implicit padding (asserted size 4 * 4, padding field
// explicit) and every bit pattern of its integer fields is valid.
unsafe impl aya::Pod for StackKey {}
