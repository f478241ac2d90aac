//! Sonde's continuous CPU profiler: one perf-event program attached to the software cpu-clock of
//! every CPU. For a sample of a selected process (its tgid or its cgroup v2 id is in a filter map
//! maintained by user space) it stores the user and kernel stacks in the active buffer's stack map
//! and counts the sample per (tgid, user stack id, kernel stack id) in the active buffer's counts map.
//! User space flips the active buffer each period and drains the other one (see
//! `sonde_common::profiler`). Stacks are walked by the kernel through frame pointers.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add`; the intrinsic lowers to the BPF atomic add.
#![expect(internal_features, reason = "core_intrinsics gives the BPF atomic add")]
#![feature(core_intrinsics)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext},
};
use sonde_common::profiler::{
    CONFIG_ACTIVE_BUFFER, CONFIG_ENTRIES, DROP_KERNEL_STACK, DROP_MAP_FULL, DROP_REASONS,
    DROP_USER_STACK, MAX_KEYS, MAX_STACKS, NO_STACK, StackKey,
};

/// `EFAULT`: the context has no stack of that kind (a user-mode sample has no kernel stack).
const EFAULT: i32 = 14;
/// `EEXIST`: insert raced with another CPU inserting the same key.
const EEXIST: i32 = 17;

#[map]
static PROFILER_CONFIG: Array<u32> = Array::with_max_entries(CONFIG_ENTRIES, 0);
#[map]
static PROFILER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);
#[map]
static PROFILER_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);
#[map]
static PROFILER_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);
#[map]
static PROFILER_COUNTS_0: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_KEYS, 0);
#[map]
static PROFILER_COUNTS_1: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_KEYS, 0);
#[map]
static PROFILER_STACKS_0: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);
#[map]
static PROFILER_STACKS_1: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

#[perf_event]
pub fn profiler_sample(ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 || !selected(tgid) {
        return 0;
    }
    // Separate call sites per buffer: the verifier wants one known map per helper call.
    match PROFILER_CONFIG.get(CONFIG_ACTIVE_BUFFER).copied() {
        Some(1) => sample(&ctx, tgid, &PROFILER_STACKS_1, &PROFILER_COUNTS_1),
        _ => sample(&ctx, tgid, &PROFILER_STACKS_0, &PROFILER_COUNTS_0),
    }
    0
}

#[inline(always)]
fn selected(tgid: u32) -> bool {
    if PROFILER_TGIDS.get_ptr(tgid).is_some() {
        return true;
    }
    // SAFETY: the helper takes no arguments and only reads the current task's cgroup.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    PROFILER_CGROUPS.get_ptr(cgroup).is_some()
}

#[inline(always)]
fn sample(ctx: &PerfEventContext, tgid: u32, stacks: &StackTrace, counts: &HashMap<StackKey, u64>) {
    let key = StackKey {
        tgid,
        user_stack_id: stack_id(ctx, stacks, BPF_F_USER_STACK as u64, DROP_USER_STACK),
        kernel_stack_id: stack_id(ctx, stacks, 0, DROP_KERNEL_STACK),
        _pad: 0,
    };
    if increment(counts, &key) {
        return;
    }
    match counts.insert(&key, &1, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU inserted the key between our lookup and insert: add to its count.
        Err(e) if e as i32 == -EEXIST => {
            if !increment(counts, &key) {
                count_drop(DROP_MAP_FULL);
            }
        }
        Err(_) => count_drop(DROP_MAP_FULL),
    }
}

/// Adds one to an existing count; false when the key is not there.
#[inline(always)]
fn increment(counts: &HashMap<StackKey, u64>, key: &StackKey) -> bool {
    match counts.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: the map value is a u64 that lives as long as the map entry; other CPUs update
            // it concurrently, hence the atomic add.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
            true
        }
        None => false,
    }
}

#[inline(always)]
fn stack_id(ctx: &PerfEventContext, stacks: &StackTrace, flags: u64, reason: u32) -> i32 {
    match ctx.get_stackid(stacks, flags) {
        Ok(id) => id as i32,
        Err(e) if e == -EFAULT => NO_STACK,
        Err(_) => {
            count_drop(reason);
            NO_STACK
        }
    }
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(counter) = PROFILER_DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs (no preemption).
        unsafe { *counter += 1 };
    }
}

#[path = "../runtime.rs"]
mod runtime;
