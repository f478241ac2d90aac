//! Protocol-tracing capture from syscall tracepoints only (no kprobes, no fentry).
//!
//! Every hook first checks a prefilter bitmap of the selected tgids and cgroup v2 ids (maintained by
//! the agent): any other process pays two array loads and leaves. For a selected process the enter
//! hook stashes the arguments in the thread's slot — the exact maps are asked only when the slot is
//! new or older than the last change of the selection (the selection epoch) — and the exit hook
//! reads them back with the return value and acts:
//! - connect/accept(4): a new connection (tgid, fd, generation) with its role and peer address;
//! - read/write/readv/writev/recv*/send*/recvmmsg/sendmmsg: the first bytes moved, in chunks of
//!   `DATA_CHUNK`, with the position in the connection's stream so user space sees every gap;
//! - sendfile: the bytes never pass through user memory; they are counted and reported as a gap of
//!   that length at the right stream position (a data event without data);
//! - close: the connection's byte counts.
//!
//! Data events are stamped when their bytes moved: a receive's at its exit, a send's at its entry
//! (saved in the thread's slot with the arguments), since a send may deliver its bytes to a peer
//! on the same node, and even get the answer, before it returns.
//!
//! Addresses: a TCP connect's local address comes from `sock:inet_sock_set_state` — the socket
//! enters SYN_SENT inside `connect`, on the thread whose stashed arguments name the fd, and leaves
//! it for ESTABLISHED with the source address and port chosen. Every other open (accepts, UDP
//! connects, datagram sockets) reads both ends from the kernel's socket at the syscall's exit,
//! following the current task's fd table with struct offsets the agent read from the kernel's BTF
//! (Rust eBPF gets no CO-RE); so a client gone before the agent looks keeps its address, and an
//! accept that asked for no peer address (libuv's) gets it. Without BTF, user space looks at the
//! fd (an accepted one's local address is its listener's), and client opens wake it soon enough.
//!
//! Socket vs non-socket fds: fds from connect/accept are known sockets (non-inet families are ignored).
//! Any other fd a selected process does I/O on is looked at by the same walk: one that is no inet
//! socket (a file, a pipe, a unix socket) is ignored at once, nothing captured; an inet socket
//! (opened before the process was traced, inherited across fork) is traced at once and reported
//! with its addresses. Only without BTF (or when the walk fails) is an fd marked pending and
//! reported once; user space looks at the fd (pidfd_getfd) and sets the state to traced or
//! ignored, so each costs one lookup per syscall afterwards. Bytes moved while an fd is pending are captured all the
//! same (user space drops them if the fd is no socket): a socket inherited across fork, like a
//! PostgreSQL backend's, starts with the message that identifies its protocol. A datagram syscall
//! that names its peer (recvfrom/recvmsg/recvmmsg returning a source address, sendto/sendmsg/
//! sendmmsg given a destination) is on an inet socket by definition: its connection is created
//! right there (role server for a receive, client for a send), so an unconnected UDP server loses
//! nothing of its first datagram; each later change of peer is reported before the data. Every
//! loss is counted per reason in `CONN_DROPS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        bpf_probe_read_user_buf, generated,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TracePointContext,
};
use formats::{CLONE_THREAD, NEWTASK_CLONE_FLAGS, NEWTASK_PID};
use sonde_common::conn::{
    CLASSIFY_INET, CLASSIFY_UDP, CONN_IGNORE, CONN_PENDING, CONN_STATS_ONLY, CONN_TRACE, ClassifyEvent, CloseEvent, ConnInfo,
    ConnKey, DATA_CHUNK, DIR_EGRESS, DIR_INGRESS, DROP_ARGS_MAP_FULL, DROP_CONN_MAP_FULL,
    DROP_READ_FAILED, DROP_REASONS, DROP_RING_FULL, DROP_SHED, DROP_TGIDS_MAP_FULL, DROP_TRUNCATED,
    DROP_UNCLASSIFIED, DataEvent, DataEventHeader, EVENT_CLASSIFY, EVENT_CLOSE, EVENT_DATA,
    COMM_BYTES, EVENT_EXEC, EVENT_FORK, EVENT_LOCAL, EVENT_OPEN, EVENT_PEER, EXEC_PATH_BYTES,
    EXEC_SELECTED,
    EventHeader, ExecEvent, ExecPath, FILTER_WORDS, ForkEvent,
    LocalEvent, MAX_CHUNKS_PER_SYSCALL, MAX_IOVECS, MAX_MMSGS, OPEN_DATAGRAM, OPEN_LOCAL_REPORTED,
    OPEN_SOCKET_READ, OPEN_UDP, OpenEvent, PeerAddr, PeerEvent, ROLE_CLIENT, ROLE_SERVER,
    ROLE_UNKNOWN, SYS_RECVMMSG, SYS_SENDMMSG, SockOffsets, TAIL_BYTES, TAIL_GAP_CHUNK,
    filter_bit_cgroup, filter_bit_tgid, shed_slot,
};

/// The agent's own tgid: never traced (its HTTP answers would feed back into its tables).
#[unsafe(no_mangle)]
static CONN_AGENT_TGID: u32 = 0;
/// 1: trace every process (cluster-wide auto-telemetry), not only the selected ones.
#[unsafe(no_mangle)]
static CONN_TRACE_ALL: u32 = 0;
/// This kernel's struct layout for [`socket_addresses`], from its BTF (all zero without BTF).
#[unsafe(no_mangle)]
static CONN_SOCK_OFFSETS: SockOffsets = SockOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_inode: 0,
    inode_mode: 0,
    file_private_data: 0,
    socket_type: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_rcv_saddr: 0,
    skc_num: 0,
    skc_v6_rcv_saddr: 0,
    skc_daddr: 0,
    skc_dport: 0,
    skc_v6_daddr: 0,
    fields_known: 0,
};

#[map]
static CONN_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static CONN_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);
#[map]
static CONN_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);
/// Bits of the selected tgids and cgroup ids (`sonde_common::conn::FILTER_WORDS`): checked
/// before the exact maps above so that unselected processes leave after two array loads.
#[map]
static CONN_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);
/// One counter: the selection epoch (see `selection_epoch`).
#[map]
static CONN_EPOCH: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static CONN_CONNS: HashMap<ConnKey, ConnInfo> = HashMap::with_max_entries(65536, 0);
/// Per-thread syscall arguments, enter → exit. Each thread's slot is written in place at enter and
/// disarmed at exit (no insert/delete per syscall: those took a bucket lock and a free-list trip
/// each); removed when the thread exits (`conn_sched_process_exit`). Not LRU: an LRU map would evict
/// the slot of a thread blocked in a traced syscall without a trace, while a full map is counted
/// (`args_map_full`).
#[map]
static CONN_ARGS: HashMap<u64, Args> = HashMap::with_max_entries(16384, 0);
#[map]
static CONN_SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);
/// Scratch of [`emit_gathered`]: twice a chunk, so an offset below `DATA_CHUNK` plus a length of at
/// most `DATA_CHUNK` stays inside it in a way the verifier can check.
#[map]
static CONN_GATHER: PerCpuArray<GatherEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CONN_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);
/// One value: how many shedding slots the agent sheds (0 while the node has CPU to spare).
#[map]
static CONN_SHED: Array<u32> = Array::with_max_entries(1, 0);

// x86-64 syscall numbers, carried in data events for diagnostics.
const SYS_READ: u32 = 0;
const SYS_WRITE: u32 = 1;
const SYS_READV: u32 = 19;
const SYS_WRITEV: u32 = 20;
const SYS_CONNECT: u32 = 42;
const SYS_ACCEPT: u32 = 43;
const SYS_SENDTO: u32 = 44;
const SYS_RECVFROM: u32 = 45;
const SYS_SENDMSG: u32 = 46;
const SYS_RECVMSG: u32 = 47;
const SYS_SENDFILE: u32 = 40;

/// sendmmsg/recvmmsg messages whose lengths are still added to the byte counts beyond the
/// `MAX_MMSGS` whose bytes are captured.
const MAX_MMSGS_COUNTED: u64 = 64;
/// `struct mmsghdr`: a msghdr (56 bytes) then `msg_len` (u32), padded to 64.
const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_LEN_OFFSET: u64 = 56;

/// How the stashed buffer argument is laid out.
const BUF_PLAIN: u32 = 0;
const BUF_IOVEC: u32 = 1;
const BUF_MSGHDR: u32 = 2;
/// An mmsghdr array (count: its length); handled by `conn_exit_mmsg`.
const BUF_MMSG: u32 = 3;
/// No buffer (sendfile).
const BUF_NONE: u32 = 4;

/// Size of the capture ring buffer.
const RING_BYTES: u32 = 16 << 20;
/// Free room below which a data syscall's bytes are not copied: its events (up to
/// `MAX_CHUNKS_PER_SYSCALL` chunks, each with its headers) might not fit.
const SHED_MARGIN: u64 = MAX_CHUNKS_PER_SYSCALL as u64 * (DATA_CHUNK as u64 + 128);

/// The agent is woken each time this many more unread bytes wait in the ring; below, it drains the
/// ring on its own timer (every 250 ms, `drain.rs`). One wake-up per event would cost a context
/// switch per syscall. An eighth of the ring: woken at all only above ~8 MB/s of records (~20k
/// HTTP requests/s), so that a wake-up (a context switch and an interrupt to the producing CPU) is
/// paid per 2 MiB drained rather than per 256 KiB, while a burst still leaves 7/8 of the ring free.
const WAKEUP_BYTES: u64 = 2 << 20;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

/// A data event whose bytes are gathered from several iovecs (same layout as `DataEvent` up to
/// the data sent).
#[repr(C)]
struct GatherEvent {
    header: DataEventHeader,
    data: [u8; 2 * DATA_CHUNK],
    /// The iovec array (base, length), read in one call: one user-memory read instead of one per
    /// iovec (each read costs ~0.1 µs with its checks). Not sent.
    iovecs: [[u64; 2]; MAX_IOVECS as usize],
}

/// [`Args::syscall`] of a slot whose syscall has exited (or never stashed): nothing to take.
const SYS_NONE: u32 = u32::MAX;

/// Arguments stashed at syscall entry, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
struct Args {
    fd: u64,
    /// Buffer, iovec array, msghdr or sockaddr pointer.
    buf: u64,
    /// Byte count or iovec count.
    count: u64,
    syscall: u32,
    layout: u32,
    /// recvfrom/sendto: the sockaddr pointer (0: none).
    addr: u64,
    /// recvfrom: pointer to the address length; sendto: the address length.
    addr_len: u64,
    /// [`selection_epoch`] when the process was last found selected.
    epoch: u64,
    /// Monotonic ns at the entry of a syscall that sends (0 for the others): its data events'
    /// time. The bytes may reach the peer, and its answer come back, long before the send returns
    /// (loopback and veth deliver inside the send; the first send on a fresh UDP socket binds it
    /// and looks up its route), so a client's request stamped at exit could look answered sooner
    /// than the server took.
    entry_ns: u64,
}

/// Offset of syscall argument `n` in a `syscalls:sys_enter_*` record (after the common header and
/// `__syscall_nr`).
const fn arg_offset(n: usize) -> usize {
    16 + 8 * n
}
/// Offset of `ret` in a `syscalls:sys_exit_*` record.
const RET_OFFSET: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // Syscall tracepoint records hold six u64 arguments after a 16-byte header.
    ctx_load(ctx, arg_offset(n))
}

/// The return value of a `syscalls:sys_exit_*` record (the i64 at RET_OFFSET of each).
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    ctx_load(ctx, RET_OFFSET)
}

/// The field of type `T` at `offset` of a tracepoint's record, loaded directly: one instruction
/// instead of a probe-read helper call (the verifier allows aligned reads within the record).
#[inline(always)]
fn ctx_load<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: callers pass offsets of fields of type T from the tracepoint's format file, aligned
    // for T and inside the record.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

/// Ring-buffer output flags for a record of `size` bytes: wake the agent when the unread bytes
/// cross a multiple of [`WAKEUP_BYTES`]. Only at the crossing: a wake-up is an irq_work (an
/// interrupt to this CPU), and waking on every record while the agent lags behind cost nginx 1.4%
/// of its CPU at saturation, more than half of all its ring-buffer output time. A crossing two
/// CPUs both miss is caught at the next multiple, or by the agent's timer.
#[inline(always)]
fn wakeup(size: usize) -> u64 {
    let before = CONN_EVENTS.query(BPF_RB_AVAIL_DATA);
    if before / WAKEUP_BYTES != (before + size as u64) / WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Is the ring too full for a data syscall's events? Asked before its bytes are read, so that the
/// syscalls the agent cannot keep up with (a burst beyond its parsing speed, an agent short of
/// CPU) cost little more than the bare hooks. Their bytes still advance the stream position: user
/// space sees the gap, and the loss is counted as `ring_full`.
#[inline(always)]
fn ring_too_full() -> bool {
    CONN_EVENTS.query(BPF_RB_AVAIL_DATA) + SHED_MARGIN > u64::from(RING_BYTES)
}

/// Writes `event` to the ring (waking the agent as [`wakeup`] says).
#[inline(always)]
fn send<T>(event: &T) -> Result<(), i32> {
    CONN_EVENTS.output::<T>(event, wakeup(core::mem::size_of::<T>()))
}

/// Writes a record of `bytes` (a header and its data) to the ring.
#[inline(always)]
fn send_bytes(bytes: &[u8]) -> Result<(), i32> {
    CONN_EVENTS.output::<[u8]>(bytes, wakeup(bytes.len()))
}

/// A client connection's open event wakes the agent at once, at most once per this many ns, when
/// the kernel does not report its local address (TCP connects get theirs from
/// `conn_sock_set_state`, others from [`socket_addresses`] — unless the kernel has no BTF): user
/// space then reads it from the fd, and a short-lived client (a CLI, a health check) may close it
/// long before the next timed drain. Servers' come from their listener. The classify event of an
/// fd not seen opened wakes it the same way.
const OPEN_WAKE_GAP_NS: u64 = 10_000_000;

/// When a client open event last woke the agent (one slot; a race between CPUs costs at most an
/// extra wake-up).
#[map]
static CONN_OPEN_WAKE: Array<u64> = Array::with_max_entries(1, 0);

/// Writes an event user space must act on by looking at the fd (the open of a client connection
/// whose local address only its fd tells, a classify event), waking the agent unless one did less
/// than [`OPEN_WAKE_GAP_NS`] ago (the agent then drains again that soon).
#[inline(always)]
fn send_for_a_look<T>(event: &T, now: u64) -> Result<(), i32> {
    CONN_EVENTS.output::<T>(event, look_flags(core::mem::size_of::<T>(), now))
}

/// The output flags of [`send_for_a_look`] for a record of `size` bytes.
#[inline(always)]
fn look_flags(size: usize, now: u64) -> u64 {
    let mut flags = wakeup(size);
    if let Some(last) = CONN_OPEN_WAKE.get_ptr_mut(0) {
        // SAFETY: the map's only slot; a torn race between CPUs only changes when the next wakes.
        unsafe {
            if now.wrapping_sub(*last) >= OPEN_WAKE_GAP_NS {
                *last = now;
                flags = BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    flags
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(slot) = CONN_DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while they run.
        unsafe { *slot += 1 };
    }
}

/// Is this connection shed (its bytes counted, not captured)? Counted when it is.
#[inline(always)]
fn shed(key: &ConnKey, generation: u64) -> bool {
    let shed = CONN_SHED.get(0).copied().unwrap_or(0);
    if shed == 0 || shed_slot(key.tgid, key.fd, generation) >= shed {
        return false;
    }
    count_drop(DROP_SHED);
    true
}

/// Is `bit` set in the selection prefilter?
#[inline(always)]
fn filter_has(bit: u32) -> bool {
    CONN_FILTER
        .get(bit / 64)
        .is_some_and(|word| word & (1 << (bit % 64)) != 0)
}

/// The early exit every hook starts with: is this process traced? The prefilter bitmap answers
/// "no" for almost every other process; the exact maps confirm a set bit.
#[inline(always)]
fn selected(tgid: u32) -> bool {
    // SAFETY: reading u32 globals the loader may rewrite in .rodata; volatile keeps the loads.
    if unsafe { core::ptr::read_volatile(&CONN_TRACE_ALL) } != 0 {
        return tgid != unsafe { core::ptr::read_volatile(&CONN_AGENT_TGID) };
    }
    // SAFETY: plain lookups; the values are not dereferenced.
    if filter_has(filter_bit_tgid(tgid)) && unsafe { CONN_TGIDS.get(&tgid) }.is_some() {
        return true;
    }
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    filter_has(filter_bit_cgroup(cgroup)) && unsafe { CONN_CGROUPS.get(&cgroup) }.is_some()
}

#[inline(always)]
fn stash(fd: u64, buf: u64, count: u64, syscall: u32, layout: u32) -> u32 {
    stash_addr(fd, buf, count, syscall, layout, 0, 0)
}

#[inline(always)]
fn stash_addr(
    fd: u64,
    buf: u64,
    count: u64,
    syscall: u32,
    layout: u32,
    addr: u64,
    addr_len: u64,
) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !maybe_selected(tgid) {
        return 0;
    }
    // `syscall` is a constant in each enter hook: the others have no clock read at all.
    let entry_ns = if sends(syscall) {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    // A thread with a slot of the current selection epoch belongs to a selected process: no
    // need to ask the exact maps again (one hash lookup per syscall instead of two or three).
    // Fds known not to be inet sockets are left to the exit hook, which looks the fd up anyway.
    let epoch = selection_epoch();
    let args = Args {
        fd,
        buf,
        count,
        syscall,
        layout,
        addr,
        addr_len,
        epoch,
        entry_ns,
    };
    match CONN_ARGS.get_ptr_mut(&id) {
        // SAFETY: this thread's own slot; only this thread writes it, at enter and exit.
        Some(slot) if unsafe { (*slot).epoch } == epoch => unsafe { *slot = args },
        Some(slot) => {
            if selected(tgid) {
                // SAFETY: as above.
                unsafe { *slot = args };
            }
        }
        None => {
            if selected(tgid) && CONN_ARGS.insert(&id, &args, 0).is_err() {
                count_drop(DROP_ARGS_MAP_FULL);
            }
        }
    }
    0
}

/// Does `syscall` send bytes (its data events are stamped at its entry, [`Args::entry_ns`])?
#[inline(always)]
fn sends(syscall: u32) -> bool {
    matches!(
        syscall,
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG | SYS_SENDMMSG | SYS_SENDFILE
    )
}

/// The selection epoch: user space bumps it whenever a tgid or cgroup leaves the selection, so a
/// slot written before then proves nothing any more.
#[inline(always)]
fn selection_epoch() -> u64 {
    CONN_EPOCH.get(0).copied().unwrap_or(0)
}

/// The prefilter alone: false only for processes that cannot be selected. Exit hooks ask this
/// before looking for their thread's slot (a hash lookup every other process would pay).
#[inline(always)]
fn maybe_selected(tgid: u32) -> bool {
    // SAFETY: as in `selected`.
    let all = unsafe { core::ptr::read_volatile(&CONN_TRACE_ALL) };
    all != 0
        || filter_has(filter_bit_tgid(tgid))
        || filter_has(filter_bit_cgroup(unsafe { bpf_get_current_cgroup_id() }))
}

/// Takes the arguments stashed by this thread's enter hook (None for every process not traced,
/// and for a syscall whose enter stashed nothing, e.g. on an ignored fd). A process deselected
/// between enter and exit leaves its slot armed; the next enter overwrites it.
#[inline(always)]
fn take_args(id: u64) -> Option<Args> {
    if !maybe_selected((id >> 32) as u32) {
        return None;
    }
    let slot = CONN_ARGS.get_ptr_mut(&id)?;
    // SAFETY: this thread's own slot (see `stash_addr`); copied, then disarmed in place.
    let args = unsafe { *slot };
    if args.syscall == SYS_NONE {
        return None;
    }
    unsafe { (*slot).syscall = SYS_NONE };
    Some(args)
}

#[inline(always)]
fn header(kind: u32, id: u64, fd: u32, generation: u64, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        tgid: (id >> 32) as u32,
        ts_ns,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        fd,
        tid: id as u32,
        generation,
    }
}

#[tracepoint]
pub fn conn_enter_read(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_READ,
        BUF_PLAIN,
    )
}

#[tracepoint]
pub fn conn_enter_write(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_WRITE,
        BUF_PLAIN,
    )
}

#[tracepoint]
pub fn conn_enter_readv(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_READV,
        BUF_IOVEC,
    )
}

#[tracepoint]
pub fn conn_enter_writev(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_WRITEV,
        BUF_IOVEC,
    )
}

/// recv flag: the bytes stay queued and the next read returns them again (servers sniffing for
/// TLS, dnsmasq sizing a datagram). Such a read is not followed: its bytes would be seen twice.
const MSG_PEEK: u64 = 2;

#[tracepoint]
pub fn conn_enter_recvfrom(ctx: TracePointContext) -> u32 {
    // Args: fd, ubuf, size, flags, addr, addr_len (a pointer).
    if arg(&ctx, 3) & MSG_PEEK != 0 {
        return 0;
    }
    stash_addr(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_RECVFROM,
        BUF_PLAIN,
        arg(&ctx, 4),
        arg(&ctx, 5),
    )
}

#[tracepoint]
pub fn conn_enter_sendto(ctx: TracePointContext) -> u32 {
    // Args: fd, buff, len, flags, addr, addr_len.
    stash_addr(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_SENDTO,
        BUF_PLAIN,
        arg(&ctx, 4),
        arg(&ctx, 5),
    )
}

#[tracepoint]
pub fn conn_enter_recvmsg(ctx: TracePointContext) -> u32 {
    // Args: fd, msg, flags.
    if arg(&ctx, 2) & MSG_PEEK != 0 {
        return 0;
    }
    stash(arg(&ctx, 0), arg(&ctx, 1), 0, SYS_RECVMSG, BUF_MSGHDR)
}

#[tracepoint]
pub fn conn_enter_sendmsg(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, 0), arg(&ctx, 1), 0, SYS_SENDMSG, BUF_MSGHDR)
}

#[tracepoint]
pub fn conn_enter_recvmmsg(ctx: TracePointContext) -> u32 {
    // Args: fd, mmsg, vlen, flags, timeout.
    if arg(&ctx, 3) & MSG_PEEK != 0 {
        return 0;
    }
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_RECVMMSG,
        BUF_MMSG,
    )
}

#[tracepoint]
pub fn conn_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // Args: fd, mmsg, vlen, flags.
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_SENDMMSG,
        BUF_MMSG,
    )
}

#[tracepoint]
pub fn conn_enter_sendfile(ctx: TracePointContext) -> u32 {
    // Args: out_fd, in_fd, offset, count. Only the socket side (out_fd) is traced.
    stash(arg(&ctx, 0), 0, arg(&ctx, 3), SYS_SENDFILE, BUF_NONE)
}

#[tracepoint]
pub fn conn_enter_connect(ctx: TracePointContext) -> u32 {
    // Args: fd, uservaddr, addrlen. u32::MAX layout: not a data syscall.
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_CONNECT,
        u32::MAX,
    )
}

#[tracepoint]
pub fn conn_enter_accept(ctx: TracePointContext) -> u32 {
    // Args (accept and accept4): fd, upeer_sockaddr, upeer_addrlen (a pointer).
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_ACCEPT,
        u32::MAX,
    )
}

#[tracepoint]
pub fn conn_exit_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    let ret = ret(&ctx);
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    // A TCP connect's local address comes from `conn_sock_set_state`: no need to wake the agent.
    let flags = if args.layout == LAYOUT_TCP_CONNECT {
        OPEN_LOCAL_REPORTED
    } else {
        0
    };
    open_peer(
        id,
        args.fd as u32,
        read_sockaddr(args.buf),
        ROLE_CLIENT,
        u32::MAX,
        flags,
    );
    0
}

/// `Args::layout` of a connect whose socket entered SYN_SENT: a TCP connect.
const LAYOUT_TCP_CONNECT: u32 = u32::MAX - 1;

/// `sock:inet_sock_set_state` record: offsets from its format file.
const SK_SKADDR: usize = 8;
const SK_OLDSTATE: usize = 16;
const SK_NEWSTATE: usize = 20;
const SK_SPORT: usize = 24;
const SK_FAMILY: usize = 28;
const SK_PROTOCOL: usize = 30;
const SK_SADDR: usize = 32;
const SK_SADDR_V6: usize = 40;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const IPPROTO_TCP: u16 = 6;

/// Sockets of traced TCP connects between SYN_SENT and the next state, by socket address. LRU: a
/// socket freed without leaving SYN_SENT through this tracepoint only ages out.
#[map]
static CONN_SOCKS: LruHashMap<u64, ConnKey> = LruHashMap::with_max_entries(16384, 0);

/// A TCP socket changes state (any process: it may fire in softirq context). A traced connect's
/// socket enters SYN_SENT inside `connect(2)`, on the connecting thread, whose stashed arguments
/// name the fd; when it leaves SYN_SENT for ESTABLISHED the kernel has chosen the source address
/// and port, which user space could otherwise only read from the fd while it is still open.
#[tracepoint]
pub fn conn_sock_set_state(ctx: TracePointContext) -> u32 {
    // Direct loads from the record, states first: this runs for every TCP state change on the
    // node (~10 per connection), and most of them leave after these two loads.
    let (old, new) = (
        ctx_load::<i32>(&ctx, SK_OLDSTATE),
        ctx_load::<i32>(&ctx, SK_NEWSTATE),
    );
    if (new != TCP_SYN_SENT && old != TCP_SYN_SENT)
        || ctx_load::<u16>(&ctx, SK_PROTOCOL) != IPPROTO_TCP
    {
        return 0;
    }
    let sk = ctx_load::<u64>(&ctx, SK_SKADDR);
    if new == TCP_SYN_SENT {
        connecting(sk);
        return 0;
    }
    // SAFETY: the value is copied before the entry is removed.
    let Some(key) = (unsafe { CONN_SOCKS.get(&sk) }).copied() else {
        return 0;
    };
    let _ = CONN_SOCKS.remove(&sk);
    if new == TCP_ESTABLISHED {
        established(&ctx, key);
    }
    0
}

#[inline(always)]
fn connecting(sk: u64) {
    let id = bpf_get_current_pid_tgid();
    if !maybe_selected((id >> 32) as u32) {
        return;
    }
    let Some(slot) = CONN_ARGS.get_ptr_mut(&id) else {
        return;
    };
    // SAFETY: this thread's own slot, written by its connect's enter hook (see `stash_addr`).
    let args = unsafe { &mut *slot };
    if args.syscall != SYS_CONNECT {
        return;
    }
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    if CONN_SOCKS.insert(&sk, &key, 0).is_ok() {
        args.layout = LAYOUT_TCP_CONNECT;
    }
}

#[inline(always)]
fn established(ctx: &TracePointContext, key: ConnKey) {
    let mut local = NO_PEER;
    local.family = ctx_load::<u16>(ctx, SK_FAMILY);
    local.port = ctx_load::<u16>(ctx, SK_SPORT);
    if local.family == AF_INET {
        let addr = ctx_load::<[u8; 4]>(ctx, SK_SADDR);
        // Byte by byte: a slice copy could become a memcpy call, which BPF cannot make.
        for i in 0..4 {
            local.addr[i] = addr[i];
        }
    } else {
        local.addr = ctx_load::<[u8; 16]>(ctx, SK_SADDR_V6);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = LocalEvent {
        header: EventHeader {
            kind: EVENT_LOCAL,
            tgid: key.tgid,
            ts_ns: now,
            cgroup_id: 0,
            fd: key.fd,
            tid: 0,
            generation: 0,
        },
        local,
        _pad: 0,
    };
    if send::<LocalEvent>(&event).is_err() {
        count_drop(DROP_RING_FULL);
    }
}

#[tracepoint]
pub fn conn_exit_accept(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    let ret = ret(&ctx);
    if ret < 0 {
        return 0;
    }
    open(id, ret as u32, args.buf, ROLE_SERVER, args.fd as u32);
    0
}

/// Reads a `sockaddr` from user memory (may be null); unreadable parts stay zero.
#[inline(always)]
fn read_sockaddr(sockaddr: u64) -> PeerAddr {
    let mut peer = NO_PEER;
    if sockaddr == 0 {
        return peer;
    }
    // sockaddr_in: family u16, port u16 (big endian), addr [u8; 4];
    // sockaddr_in6: family, port, flowinfo u32, addr [u8; 16].
    // SAFETY: reads of user memory through the checked helper; failures leave zeros.
    let family = unsafe { bpf_probe_read_user(sockaddr as *const u16) }.unwrap_or(0);
    let port = unsafe { bpf_probe_read_user((sockaddr + 2) as *const u16) }.unwrap_or(0);
    peer.family = family;
    peer.port = u16::from_be(port);
    if family == AF_INET {
        let _ =
            unsafe { bpf_probe_read_user_buf((sockaddr + 4) as *const u8, &mut peer.addr[..4]) };
    } else if family == AF_INET6 {
        let _ = unsafe { bpf_probe_read_user_buf((sockaddr + 8) as *const u8, &mut peer.addr) };
    }
    peer
}

/// An inet peer address of `len` bytes at `sockaddr`; None for null, short or non-inet ones.
#[inline(always)]
fn read_peer(sockaddr: u64, len: u64) -> Option<PeerAddr> {
    // sockaddr_in is 16 bytes, sockaddr_in6 28; the kernel reports 0 for connected sockets.
    if sockaddr == 0 || len < 16 {
        return None;
    }
    let peer = read_sockaddr(sockaddr);
    match peer.family {
        AF_INET => Some(peer),
        AF_INET6 if len >= 24 => Some(peer),
        _ => None,
    }
}

/// The `msg_name` of a msghdr in user memory, with its length (after a receive: as the kernel
/// filled it in).
#[inline(always)]
fn msghdr_peer(msghdr: u64) -> Option<PeerAddr> {
    // struct msghdr: msg_name at 0, msg_namelen (u32) at 8.
    // SAFETY: reads of user memory through the checked helper.
    let name = unsafe { bpf_probe_read_user(msghdr as *const u64) }.ok()?;
    let len = unsafe { bpf_probe_read_user((msghdr + 8) as *const u32) }.ok()?;
    read_peer(name, u64::from(len))
}

/// The peer a plain datagram syscall names, read after it returned: the source address filled in
/// by recvfrom/recvmsg or the destination given to sendto/sendmsg.
#[inline(always)]
fn datagram_peer(args: &Args) -> Option<PeerAddr> {
    match args.syscall {
        SYS_RECVFROM => {
            if args.addr == 0 || args.addr_len == 0 {
                return None;
            }
            // SAFETY: addr_len points to the socklen_t the kernel updated.
            let len = unsafe { bpf_probe_read_user(args.addr_len as *const u32) }.ok()?;
            read_peer(args.addr, u64::from(len))
        }
        SYS_SENDTO => read_peer(args.addr, args.addr_len),
        SYS_RECVMSG | SYS_SENDMSG => msghdr_peer(args.buf),
        _ => None,
    }
}

#[inline(always)]
fn same_peer(a: &PeerAddr, b: &PeerAddr) -> bool {
    // Field by field: a slice comparison would need memcmp, which BPF programs cannot call.
    let mut same = a.family == b.family && a.port == b.port;
    for i in 0..16 {
        same = same && a.addr[i] == b.addr[i];
    }
    same
}

/// Records a new connection on `fd`, replacing whatever the fd was before, and reports it.
/// `sockaddr` (user memory, may be null) is the peer address.
#[inline(always)]
fn open(id: u64, fd: u32, sockaddr: u64, role: u32, listen_fd: u32) {
    open_peer(id, fd, read_sockaddr(sockaddr), role, listen_fd, 0);
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_DGRAM: i16 = 2;

/// A kernel value at `addr` (a kernel pointer plus an offset); None if it cannot be read.
#[inline(always)]
fn kernel_read<T>(addr: u64) -> Option<T> {
    // SAFETY: the checked helper reads kernel memory and fails on a bad address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// What the kernel's socket says of itself.
struct SocketAddresses {
    local: PeerAddr,
    /// The peer (zero for an unconnected datagram socket).
    remote: PeerAddr,
    /// A datagram (UDP) socket.
    udp: bool,
}

/// An offset of [`CONN_SOCK_OFFSETS`], field by field as each is used: a copy of the whole
/// struct would take stack room that the data programs the walks are inlined into do not have.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read of a global the loader sets before the program loads.
        u64::from(unsafe { core::ptr::read_volatile(&CONN_SOCK_OFFSETS.$field) })
    };
}

/// An inet socket the kernel has behind an fd.
struct InetSocket {
    /// Its `struct sock`.
    sk: u64,
    family: u16,
    /// A datagram (UDP) socket.
    udp: bool,
}

/// The inet socket behind the current task's `fd`: `Some(None)` when the fd is none (a file, a
/// pipe, a unix socket); None when that cannot be told (no BTF offsets, a failed read, an fd
/// closed meanwhile).
#[inline(always)]
fn fd_inet_socket(fd: u32) -> Option<Option<InetSocket>> {
    if offset!(fields_known) == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kernel_read(task + offset!(task_files))?;
    let fdt: u64 = kernel_read(files + offset!(files_fdt))?;
    let max_fds: u32 = kernel_read(fdt + offset!(fdtable_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = kernel_read(fdt + offset!(fdtable_fd))?;
    let file: u64 = kernel_read(fds + 8 * u64::from(fd))?;
    if file == 0 {
        return None;
    }
    // The fd may have been closed and reused by another thread since the syscall: make sure
    // `private_data` is a `struct socket` before following it.
    let inode: u64 = kernel_read(file + offset!(file_inode))?;
    let mode: u16 = kernel_read(inode + offset!(inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Some(None);
    }
    let socket: u64 = kernel_read(file + offset!(file_private_data))?;
    let sock_type: i16 = kernel_read(socket + offset!(socket_type))?;
    let sk: u64 = kernel_read(socket + offset!(socket_sk))?;
    let family: u16 = kernel_read(sk + offset!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Some(None);
    }
    Some(Some(InetSocket {
        sk,
        family,
        udp: sock_type == SOCK_DGRAM,
    }))
}

/// The addresses of the inet socket behind the current task's `fd`; None without BTF offsets,
/// for a non-socket or non-inet fd, or a failed read. About a dozen kernel reads: called at
/// connection opens only.
#[inline(always)]
fn socket_addresses(fd: u32) -> Option<SocketAddresses> {
    let socket = fd_inet_socket(fd)??;
    let (mut local, mut remote) = (NO_PEER, NO_PEER);
    let udp = read_addresses(&socket, &mut local, &mut remote)?;
    Some(SocketAddresses { local, remote, udp })
}

/// Writes both addresses of an inet socket found by [`fd_inet_socket`] (`local`, `remote`: zeroed
/// by the caller); returns whether it is a datagram socket, None if a read failed.
#[inline(always)]
fn read_addresses(socket: &InetSocket, local: &mut PeerAddr, remote: &mut PeerAddr) -> Option<bool> {
    let (sk, family) = (socket.sk, socket.family);
    local.family = family;
    local.port = kernel_read(sk + offset!(skc_num))?;
    remote.family = family;
    remote.port = u16::from_be(kernel_read(sk + offset!(skc_dport))?);
    if family == AF_INET {
        let addr: [u8; 4] = kernel_read(sk + offset!(skc_rcv_saddr))?;
        let peer: [u8; 4] = kernel_read(sk + offset!(skc_daddr))?;
        // Byte by byte: a slice copy could become a memcpy call, which BPF cannot make.
        for i in 0..4 {
            local.addr[i] = addr[i];
            remote.addr[i] = peer[i];
        }
    } else {
        let (addr, peer) = (sk + offset!(skc_v6_rcv_saddr), sk + offset!(skc_v6_daddr));
        // SAFETY: checked reads into buffers of their length.
        unsafe { bpf_probe_read_kernel_buf(addr as *const u8, &mut local.addr) }.ok()?;
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel_buf(peer as *const u8, &mut remote.addr) }.ok()?;
    }
    Some(socket.udp)
}

/// A datagram with a peer address on an fd not known yet: an inet socket, traced from this datagram.
#[inline(always)]
fn open_datagram(id: u64, fd: u32, peer: PeerAddr, role: u32) {
    open_peer(id, fd, peer, role, u32::MAX, OPEN_DATAGRAM);
}

#[inline(always)]
fn open_peer(id: u64, fd: u32, peer: PeerAddr, role: u32, listen_fd: u32, flags: u32) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut event = OpenEvent {
        header: header(EVENT_OPEN, id, fd, now, now),
        role,
        family: peer.family,
        remote_port: peer.port,
        remote_addr: peer.addr,
        listen_fd,
        flags,
        local: NO_PEER,
        _pad: 0,
    };
    // Every open but a TCP connect (whose local address comes from `conn_sock_set_state`): the
    // addresses are read now, while the fd is the socket for sure; user space could only look at
    // the fd later (six syscalls), after a short-lived connection (a DNS lookup's socket) had
    // closed it. An accept that asked for no peer address (libuv's, hence Node.js') gets it here.
    let unaddressed_accept = listen_fd != u32::MAX && peer.family == 0;
    if flags & OPEN_LOCAL_REPORTED == 0
        && let Some(socket) = socket_addresses(fd)
    {
        event.local = socket.local;
        event.flags |= OPEN_SOCKET_READ | if socket.udp { OPEN_UDP } else { 0 };
        if unaddressed_accept {
            event.family = socket.remote.family;
            event.remote_port = socket.remote.port;
            event.remote_addr = socket.remote.addr;
        }
    }
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd,
    };
    // Unix and other non-inet sockets are ignored from the start. An unknown family (accept with a
    // null address, or an unreadable one) is traced; user space checks the fd at the open event.
    let state = if event.family == 0 || event.family == AF_INET || event.family == AF_INET6 {
        CONN_TRACE
    } else {
        CONN_IGNORE
    };
    let info = ConnInfo {
        generation: now,
        bytes_sent: 0,
        bytes_recv: 0,
        state,
        role,
        peer,
        pending_truncated: 0,
    };
    if CONN_CONNS.insert(&key, &info, 0).is_err() {
        count_drop(DROP_CONN_MAP_FULL);
        return;
    }
    if state != CONN_TRACE {
        return;
    }
    let sent = if role == ROLE_CLIENT && event.flags & (OPEN_LOCAL_REPORTED | OPEN_SOCKET_READ) == 0
    {
        send_for_a_look::<OpenEvent>(&event, now)
    } else {
        send::<OpenEvent>(&event)
    };
    if sent.is_err() {
        count_drop(DROP_RING_FULL);
    }
}

#[tracepoint]
pub fn conn_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: arg(&ctx, 0) as u32,
    };
    // SAFETY: the value is copied before the entry is removed.
    let Some(info) = (unsafe { CONN_CONNS.get(&key) }).copied() else {
        return 0;
    };
    let _ = CONN_CONNS.remove(&key);
    // Pending too: user space may have created the connection from its data already.
    if info.state != CONN_TRACE && info.state != CONN_STATS_ONLY && info.state != CONN_PENDING {
        return 0;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = CloseEvent {
        header: header(EVENT_CLOSE, id, key.fd, info.generation, now),
        bytes_sent: info.bytes_sent,
        bytes_recv: info.bytes_recv,
        pending_truncated: info.pending_truncated,
        _pad: 0,
    };
    if send::<CloseEvent>(&event).is_err() {
        count_drop(DROP_RING_FULL);
    }
    0
}

/// Exit of every data syscall.
#[tracepoint]
pub fn conn_exit_data(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    let ret = ret(&ctx);
    if ret <= 0 {
        return 0;
    }
    let ret = ret as u64;
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    let egress = sends(args.syscall);
    let Some(info) = conn_of(id, key, or_none(datagram_peer(&args)), egress) else {
        return 0;
    };
    // SAFETY: a pointer into the map value, valid for this program run; concurrent updates of the
    // same fd from two threads may lose a count, which only skews byte statistics.
    let info = unsafe { &mut *info };
    let pos = advance(info, egress, ret);
    if info.state != CONN_TRACE && info.state != CONN_PENDING {
        return 0;
    }
    if shed(&key, info.generation) {
        return 0;
    }
    if ring_too_full() {
        count_drop(DROP_RING_FULL);
        return 0;
    }
    let generation = info.generation;
    let Some(event) = CONN_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, used only for the duration of this program run.
    let event = unsafe { &mut *event };
    start_data(event, id, key.fd, generation, ret, &args);
    let mut budget = MAX_CHUNKS_PER_SYSCALL;
    let (iov, iov_count) = match args.layout {
        BUF_IOVEC => (args.buf, args.count),
        BUF_MSGHDR => {
            // struct msghdr: msg_iov at 16, msg_iovlen at 24 — laid out like an iovec.
            read_iovec(args.buf + 16)
        }
        _ => (0, 0),
    };
    let captured = match args.layout {
        // A datagram read with MSG_TRUNC returns its whole length, longer than the buffer it
        // filled: what lies past the buffer is none of its bytes.
        BUF_PLAIN => emit_buffer(event, args.buf, ret.min(args.count), pos, &mut budget, true),
        // Several iovecs whose bytes fit one chunk (nginx's headers + body writev): one event.
        BUF_IOVEC | BUF_MSGHDR if iov_count > 1 && ret <= DATA_CHUNK as u64 => {
            emit_gathered(event, iov, iov_count, ret, pos)
        }
        BUF_IOVEC | BUF_MSGHDR => emit_iovecs(event, iov, iov_count, ret, pos, &mut budget),
        _ => ret,
    };
    if captured < ret {
        count_truncated(info);
        // The parsers learn of the rest now, not when the next syscall of this direction comes
        // (maybe never, or with the next request): a response read until close, or the last one
        // sent on a keep-alive connection, ends with this syscall. From a plain buffer its tail
        // came already (see `emit_buffer`).
        if event.header.chunk != TAIL_GAP_CHUNK {
            tail_gap_marker(event, pos + ret);
        }
    }
    0
}

/// The data event without data that says the bytes before `end` were not captured.
#[inline(always)]
fn tail_gap_marker(event: &mut DataEvent, end: u64) {
    event.header.stream_pos = end;
    event.header.len = 0;
    event.header.chunk = TAIL_GAP_CHUNK;
    if send::<DataEventHeader>(&event.header).is_err() {
        count_drop(DROP_RING_FULL);
    }
}

/// No peer address (family 0).
const NO_PEER: PeerAddr = PeerAddr {
    family: 0,
    port: 0,
    addr: [0; 16],
};

/// A peer or [`NO_PEER`]: a fully written value. An `Option<PeerAddr>` passed on leaves its payload
/// undefined when it is None, and the compiler may then copy never-written registers, which the
/// verifier rejects ("!read_ok").
#[inline(always)]
fn or_none(peer: Option<PeerAddr>) -> PeerAddr {
    peer.unwrap_or(NO_PEER)
}

/// The connection state of `key` for a data syscall (None: not traced, or the map is full).
/// `peer`: the address the syscall's datagram names ([`NO_PEER`]: none). Such a datagram on an
/// unknown fd, or on one user space is still classifying, settles the fd as a traced socket at
/// once: nothing of the first datagram is lost.
#[inline(always)]
fn conn_of(id: u64, key: ConnKey, peer: PeerAddr, egress: bool) -> Option<*mut ConnInfo> {
    let role = if egress { ROLE_CLIENT } else { ROLE_SERVER };
    let Some(info) = CONN_CONNS.get_ptr_mut(&key) else {
        if peer.family != 0 {
            open_datagram(id, key.fd, peer, role);
        } else {
            unknown_fd(id, key);
        }
        return CONN_CONNS.get_ptr_mut(&key);
    };
    if peer.family != 0 {
        // SAFETY: a pointer into the map value, valid for this program run.
        note_peer(id, key.fd, unsafe { &mut *info }, peer, role);
    }
    Some(info)
}

/// A datagram names `peer`: settle a pending fd as traced, and report a change of peer so user
/// space attributes the following data to it.
#[inline(always)]
fn note_peer(id: u64, fd: u32, info: &mut ConnInfo, peer: PeerAddr, role: u32) {
    if info.state == CONN_PENDING {
        // User space's verdict only replaces a pending state, so this one stays.
        info.state = CONN_TRACE;
        info.role = role;
        // A socket after all: its truncations while pending are losses now.
        if let Some(slot) = CONN_DROPS.get_ptr_mut(DROP_TRUNCATED) {
            // SAFETY: per-CPU slot of this CPU, as in count_drop.
            unsafe { *slot += u64::from(info.pending_truncated) };
        }
        info.pending_truncated = 0;
    }
    if same_peer(&info.peer, &peer) {
        return;
    }
    info.peer = peer;
    if info.state != CONN_TRACE {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = PeerEvent {
        header: header(EVENT_PEER, id, fd, info.generation, now),
        peer,
        _pad: 0,
    };
    if send::<PeerEvent>(&event).is_err() {
        count_drop(DROP_RING_FULL);
        // Forget it so the next datagram reports the peer again.
        info.peer.family = 0;
    }
}

/// Fills the header fields a syscall's data events share (position, length and chunk are set per
/// chunk), stamped by [`data_time`].
#[inline(always)]
fn start_data(
    event: &mut DataEvent,
    id: u64,
    fd: u32,
    generation: u64,
    syscall_len: u64,
    args: &Args,
) {
    let egress = sends(args.syscall);
    event.header.header = header(EVENT_DATA, id, fd, generation, data_time(args));
    event.header.syscall_len = syscall_len;
    event.header.direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
    event.header.syscall = args.syscall;
    event.header.chunk = 0;
}

/// When a data syscall's bytes moved: a send's at its entry (its bytes may be with the peer, even
/// answered, before it returns), a receive's now, at its exit (they are there when it returns).
#[inline(always)]
fn data_time(args: &Args) -> u64 {
    if args.entry_ns != 0 {
        return args.entry_ns;
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Adds `n` bytes to one direction of a connection; returns the stream position they start at.
#[inline(always)]
fn advance(info: &mut ConnInfo, egress: bool, n: u64) -> u64 {
    if egress {
        let pos = info.bytes_sent;
        info.bytes_sent = pos + n;
        pos
    } else {
        let pos = info.bytes_recv;
        info.bytes_recv = pos + n;
        pos
    }
}

/// Exit of sendmmsg/recvmmsg: each message is reported like a syscall of its own (its peer first
/// when it changes), the first `MAX_MMSGS` with their bytes, later ones only counted.
#[tracepoint]
pub fn conn_exit_mmsg(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    let ret = ret(&ctx);
    if ret <= 0 || args.layout != BUF_MMSG {
        return 0;
    }
    let msgs = ret as u64;
    let egress = args.syscall == SYS_SENDMMSG;
    let role = if egress { ROLE_CLIENT } else { ROLE_SERVER };
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    let Some(info) = conn_of(id, key, or_none(msghdr_peer(args.buf)), egress) else {
        return 0;
    };
    // SAFETY: as in conn_exit_data.
    let info = unsafe { &mut *info };
    let Some(event) = CONN_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, used only for the duration of this program run.
    let event = unsafe { &mut *event };
    for i in 0..MAX_MMSGS as u64 {
        if i >= msgs {
            break;
        }
        let hdr = args.buf + MMSGHDR_SIZE * i;
        // SAFETY: reads of user memory through the checked helper.
        let len = unsafe { bpf_probe_read_user((hdr + MMSGHDR_LEN_OFFSET) as *const u32) }
            .map_or(0, u64::from);
        if i > 0
            && let Some(peer) = msghdr_peer(hdr)
        {
            note_peer(id, key.fd, info, peer, role);
        }
        let pos = advance(info, egress, len);
        if info.state != CONN_TRACE && info.state != CONN_PENDING {
            continue;
        }
        if shed(&key, info.generation) {
            continue;
        }
        if ring_too_full() {
            count_drop(DROP_RING_FULL);
            continue;
        }
        start_data(event, id, key.fd, info.generation, len, &args);
        // The message's msg_iov and msg_iovlen (at 16 and 24), laid out like an iovec.
        let (iov, iov_count) = read_iovec(hdr + 16);
        let captured = if iov_count > 1 && len <= DATA_CHUNK as u64 {
            // A datagram spread over several iovecs (e.g. header and payload): one event.
            emit_gathered(event, iov, iov_count, len, pos)
        } else {
            // One iovec, or a datagram above a chunk in several: its first iovec, in chunks (the
            // verifier cannot follow messages × iovecs × chunks).
            let (base, size) = read_iovec(iov);
            let take = if size < len { size } else { len };
            let mut budget = MAX_CHUNKS_PER_SYSCALL;
            emit_buffer(event, base, take, pos, &mut budget, false)
        };
        if captured < len {
            count_truncated(info);
        }
    }
    if msgs > MAX_MMSGS as u64 {
        count_truncated(info);
        // Later messages still count in the byte statistics and stream positions.
        for i in MAX_MMSGS as u64..MAX_MMSGS_COUNTED {
            if i >= msgs {
                break;
            }
            let hdr = args.buf + MMSGHDR_SIZE * i;
            // SAFETY: reads of user memory through the checked helper.
            let len = unsafe { bpf_probe_read_user((hdr + MMSGHDR_LEN_OFFSET) as *const u32) }
                .map_or(0, u64::from);
            advance(info, egress, len);
        }
    }
    0
}

/// Exit of sendfile: the bytes went from a file to the socket inside the kernel. They are counted
/// and reported as a data event without data ending at the new stream position, so the parser
/// skips them as a gap of known length (an HTTP body sent by sendfile still completes its response).
#[tracepoint]
pub fn conn_exit_sendfile(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    let ret = ret(&ctx);
    if ret <= 0 || args.layout != BUF_NONE {
        return 0;
    }
    let ret = ret as u64;
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    let Some(info) = conn_of(id, key, NO_PEER, true) else {
        return 0;
    };
    // SAFETY: as in conn_exit_data.
    let info = unsafe { &mut *info };
    let pos = advance(info, true, ret);
    if info.state != CONN_TRACE && info.state != CONN_PENDING {
        return 0;
    }
    let event = DataEventHeader {
        header: header(EVENT_DATA, id, key.fd, info.generation, data_time(&args)),
        syscall_len: ret,
        stream_pos: pos + ret,
        direction: DIR_EGRESS,
        syscall: SYS_SENDFILE,
        len: 0,
        chunk: 0,
    };
    if send::<DataEventHeader>(&event).is_err() {
        count_drop(DROP_RING_FULL);
    }
    0
}

/// First I/O of a selected process on an fd it did not get from connect/accept. An fd the kernel
/// can tell is no inet socket (a file, a pipe, a unix socket) is ignored from here on, without a
/// byte captured or a word to user space. One it can tell is an inet socket (a forked server's
/// connection, a socket accepted before the process was traced) is traced at once, and its
/// addresses go to user space with the event. Any other is pending until user space has looked:
/// its verdict is written over the whole connection entry, which could undo the byte counts of a
/// syscall that ran meanwhile, and the fd may be gone by then, so the common case does without.
#[inline(always)]
fn unknown_fd(id: u64, key: ConnKey) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let socket = fd_inet_socket(key.fd);
    let mut info = ConnInfo {
        generation: now,
        bytes_sent: 0,
        bytes_recv: 0,
        state: CONN_IGNORE,
        role: ROLE_UNKNOWN,
        peer: NO_PEER,
        pending_truncated: 0,
    };
    if let Some(None) = socket {
        if CONN_CONNS.insert(&key, &info, 0).is_err() {
            count_drop(DROP_CONN_MAP_FULL);
        }
        return;
    }
    // Written in place in the ring: the data programs this is inlined into have no stack room
    // for the event.
    let Some(mut entry) = CONN_EVENTS.reserve::<ClassifyEvent>(0) else {
        // Without the event nobody would ever classify the fd: nothing is kept, so the next I/O
        // asks again.
        count_drop(DROP_RING_FULL);
        count_drop(DROP_UNCLASSIFIED);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved record, written field by field before it is submitted.
    let event = unsafe {
        (*event).header = header(EVENT_CLASSIFY, id, key.fd, now, now);
        (*event).flags = 0;
        (*event)._pad = 0;
        (*event).local = NO_PEER;
        (*event).remote = NO_PEER;
        &mut *event
    };
    info.state = CONN_PENDING;
    if let Some(Some(socket)) = socket {
        info.state = CONN_TRACE;
        if let Some(udp) = read_addresses(&socket, &mut event.local, &mut event.remote) {
            event.flags = CLASSIFY_INET | if udp { CLASSIFY_UDP } else { 0 };
        }
    }
    if CONN_CONNS.insert(&key, &info, 0).is_err() {
        count_drop(DROP_CONN_MAP_FULL);
        entry.discard(0);
        return;
    }
    // Without the addresses user space looks at the fd through the process: a process selected
    // just after it connected (an exec the agent learns of a millisecond late) may exit long
    // before the next timed drain.
    let size = core::mem::size_of::<ClassifyEvent>();
    let flags = if event.flags & CLASSIFY_INET != 0 {
        wakeup(size)
    } else {
        look_flags(size, now)
    };
    entry.submit(flags);
}

/// The `struct iovec { void *iov_base; size_t iov_len; }` at user address `at`, in one read
/// ((0, 0) if unreadable).
#[inline(always)]
fn read_iovec(at: u64) -> (u64, u64) {
    // SAFETY: a read of user memory through the checked helper.
    unsafe { bpf_probe_read_user(at as *const [u64; 2]) }
        .map_or((0, 0), |[base, size]| (base, size))
}

/// Emits `len` bytes at user address `buf` in chunks; returns the bytes emitted. With `ends`
/// (the buffer ends the syscall), a buffer that does not fit the budget has its last chunk replaced
/// by its last [`TAIL_BYTES`] ([`TAIL_GAP_CHUNK`]): messages end there (PostgreSQL's
/// ReadyForQuery, a chunked body's last chunk), and what comes next starts a message.
#[inline(always)]
fn emit_buffer(
    event: &mut DataEvent,
    buf: u64,
    len: u64,
    pos: u64,
    budget: &mut u32,
    ends: bool,
) -> u64 {
    let mut done: u64 = 0;
    for _ in 0..MAX_CHUNKS_PER_SYSCALL {
        if done >= len || *budget == 0 {
            break;
        }
        *budget -= 1;
        event.header.chunk = MAX_CHUNKS_PER_SYSCALL - 1 - *budget;
        let n = len - done;
        if ends && *budget == 0 && n > DATA_CHUNK as u64 {
            event.header.chunk = TAIL_GAP_CHUNK;
            let at = len - TAIL_BYTES;
            if !emit_chunk(event, buf + at, TAIL_BYTES as usize, pos + at) {
                tail_gap_marker(event, pos + len);
                return done;
            }
            return done + TAIL_BYTES;
        }
        let n = if n > DATA_CHUNK as u64 {
            DATA_CHUNK as u64
        } else {
            n
        };
        if !emit_chunk(event, buf + done, n as usize, pos + done) {
            return done;
        }
        done += n;
    }
    done
}

/// Emits the first `len` bytes spread over `count` iovecs at `iov`; returns the bytes emitted.
#[inline(always)]
fn emit_iovecs(
    event: &mut DataEvent,
    iov: u64,
    count: u64,
    len: u64,
    pos: u64,
    budget: &mut u32,
) -> u64 {
    let mut done: u64 = 0;
    for i in 0..MAX_IOVECS as u64 {
        if i >= count || done >= len || *budget == 0 {
            break;
        }
        let (base, size) = read_iovec(iov + 16 * i);
        let take = if size > len - done { len - done } else { size };
        let emitted = emit_buffer(event, base, take, pos + done, budget, false);
        done += emitted;
        if emitted < take {
            break;
        }
    }
    done
}

/// Emits the first `len` (≤ DATA_CHUNK) bytes spread over `count` iovecs at `iov` as one data event
/// (`event`'s header, chunk 0); returns the bytes emitted.
#[inline(always)]
fn emit_gathered(event: &DataEvent, iov: u64, count: u64, len: u64, pos: u64) -> u64 {
    let Some(out) = CONN_GATHER.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's gather slot, used only for the duration of this program run.
    let out = unsafe { &mut *out };
    let iovecs = if count > MAX_IOVECS as u64 {
        MAX_IOVECS as usize
    } else {
        count as usize
    };
    // SAFETY: at most MAX_IOVECS entries of 16 bytes, the size of `out.iovecs`; the helper checks
    // the user address (the syscall has just read the same array).
    let failed = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            out.iovecs.as_mut_ptr().cast(),
            (16 * iovecs) as u32,
            iov as *const core::ffi::c_void,
        )
    } != 0;
    if failed {
        count_drop(DROP_READ_FAILED);
        return 0;
    }
    let mut done: u64 = 0;
    for i in 0..MAX_IOVECS as usize {
        if i >= iovecs || done >= len {
            break;
        }
        let [base, size] = out.iovecs[i];
        let take = if size > len - done { len - done } else { size };
        // Masks the verifier can follow: the offset below DATA_CHUNK (done < len ≤ DATA_CHUNK), the
        // length at most DATA_CHUNK, so the copy stays within the 2 × DATA_CHUNK buffer.
        // (`take` read back from memory: the compiler, which can prove the masks redundant, must
        // keep them for the verifier, which cannot.)
        let off = (done as usize) & (DATA_CHUNK - 1);
        // SAFETY: a read of a local.
        let n = (unsafe { core::ptr::read_volatile(&take) } as usize) & (2 * DATA_CHUNK - 1);
        let n = if n > DATA_CHUNK { DATA_CHUNK } else { n };
        // SAFETY: `off + n` ≤ 2 × DATA_CHUNK (above); the helper checks the user address.
        let failed = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                out.data.as_mut_ptr().add(off).cast(),
                n as u32,
                base as *const core::ffi::c_void,
            )
        } != 0;
        if failed {
            count_drop(DROP_READ_FAILED);
            break;
        }
        done += take;
    }
    let n = (done as usize) & (2 * DATA_CHUNK - 1);
    let n = if n > DATA_CHUNK { DATA_CHUNK } else { n };
    if n == 0 {
        return 0;
    }
    out.header = event.header;
    out.header.stream_pos = pos;
    out.header.len = n as u32;
    out.header.chunk = 0;
    let size = core::mem::size_of::<DataEventHeader>() + n;
    // SAFETY: GatherEvent is repr(C) plain data; `size` ≤ its size (n ≤ DATA_CHUNK).
    let bytes =
        unsafe { core::slice::from_raw_parts((out as *const GatherEvent).cast::<u8>(), size) };
    if send_bytes(bytes).is_err() {
        count_drop(DROP_RING_FULL);
        return 0;
    }
    n as u64
}

/// One data event of `n` (≤ DATA_CHUNK) bytes from user address `src`. False if it was lost.
#[inline(always)]
fn emit_chunk(event: &mut DataEvent, src: u64, n: usize, pos: u64) -> bool {
    let n = if n > DATA_CHUNK { DATA_CHUNK } else { n };
    event.header.stream_pos = pos;
    event.header.len = n as u32;
    // SAFETY: reads user memory into this CPU's scratch buffer through the checked helper.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut event.data[..n]) }.is_err() {
        count_drop(DROP_READ_FAILED);
        return false;
    }
    let size = core::mem::size_of::<sonde_common::conn::DataEventHeader>() + n;
    // SAFETY: DataEvent is repr(C) plain data; `size` never exceeds its size (n ≤ DATA_CHUNK).
    let bytes =
        unsafe { core::slice::from_raw_parts((event as *const DataEvent).cast::<u8>(), size) };
    if send_bytes(bytes).is_err() {
        count_drop(DROP_RING_FULL);
        return false;
    }
    true
}

/// A syscall moved more than its events carry. While the fd is pending it may be a file, whose
/// bytes are no loss: the count waits in the connection until user space knows it is a socket.
#[inline(always)]
fn count_truncated(info: &mut ConnInfo) {
    if info.state == CONN_PENDING {
        info.pending_truncated = info.pending_truncated.saturating_add(1);
    } else {
        count_drop(DROP_TRUNCATED);
    }
}

/// A thread exits: its argument slot goes. Unfiltered (exits are rare next to syscalls), so a
/// process that stopped being selected leaves no slots behind either. A process selected here (see
/// `follow_fork`, `conn_sched_process_exec`) leaves the selection with its first thread: user space
/// may not know it, and its pid may be handed out again, to a process nobody selected. (User space
/// removes the keys it added itself.)
#[tracepoint]
pub fn conn_sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let _ = CONN_ARGS.remove(&id);
    let tgid = (id >> 32) as u32;
    if id as u32 == tgid
        && filter_has(filter_bit_tgid(tgid))
        // SAFETY: plain lookup; the value is copied.
        && unsafe { CONN_TGIDS.get(&tgid) }.is_some_and(|&ancestor| ancestor != tgid)
    {
        let _ = CONN_TGIDS.remove(&tgid);
    }
    0
}

/// A selected process creates a child process (fires in the parent, before the child runs): user
/// space learns child → parent, so a socket the child inherited (a PostgreSQL backend's, accepted
/// by the postmaster) gets the parent's addresses even if the child exits before its fd can be
/// looked at, and a child of a process selected by tgid is selected from its first syscall (see
/// `follow_fork`). Threads share the process's fds and connections: nothing to report.
#[tracepoint]
pub fn conn_task_newtask(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record through the checked helper.
    let flags = unsafe { ctx.read_at::<u64>(NEWTASK_CLONE_FLAGS) }.unwrap_or(CLONE_THREAD);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let parent = (id >> 32) as u32;
    if !selected(parent) {
        return 0;
    }
    // SAFETY: as above.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(NEWTASK_PID) }) else {
        return 0;
    };
    follow_fork(parent, child as u32);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = ForkEvent {
        header: header(EVENT_FORK, id, 0, 0, now),
        child: child as u32,
        _pad: 0,
    };
    if send::<ForkEvent>(&event).is_err() {
        count_drop(DROP_RING_FULL);
    }
    0
}

/// A child of a process selected by tgid is selected too, by the same selected ancestor (the map's
/// value), before it runs: a server that forks per connection (PostgreSQL) serves the connection
/// in the child, which may be gone long before the agent's next look at the processes. A pod's
/// processes are selected by cgroup, which children share anyway.
#[inline(always)]
fn follow_fork(parent: u32, child: u32) {
    // SAFETY: plain lookup; the value is copied.
    let Some(&ancestor) = (unsafe { CONN_TGIDS.get(&parent) }) else {
        return;
    };
    select_here(child, ancestor);
}

/// Selects `tgid` from the kernel, `why` being the map's value (see `EXEC_SELECTED`). Its
/// prefilter bit is set here; user space keeps bits it did not set when it rewrites a word.
#[inline(always)]
fn select_here(tgid: u32, why: u32) {
    if CONN_TGIDS.insert(&tgid, &why, 0).is_err() {
        count_drop(DROP_TGIDS_MAP_FULL);
        return;
    }
    let bit = filter_bit_tgid(tgid);
    if let Some(word) = CONN_FILTER.get_ptr_mut(bit / 64) {
        // SAFETY: a word of the array map. Not atomic: a bit lost to a racing write only delays
        // the process's selection to the agent's next look at the processes.
        unsafe { *word |= 1 << (bit % 64) };
    }
}

/// Absolute paths of programs that process selectors name exactly, kept by user space.
#[map]
static CONN_EXEC_PATHS: HashMap<ExecPath, u32> = HashMap::with_max_entries(1024, 0);
/// File names (with their terminating zero) and starts of file names (without) that process
/// selectors name, kept by user space: one longest-prefix lookup of the thread's name answers both.
#[map]
static CONN_EXEC_FILES: LpmTrie<[u8; COMM_BYTES], u32> = LpmTrie::with_max_entries(1024, 0);
/// Scratch of `conn_sched_process_exec`: the started program's path.
#[map]
static CONN_EXEC_SCRATCH: PerCpuArray<ExecPath> = PerCpuArray::with_max_entries(1, 0);

/// `sched:sched_process_exec`: `__data_loc char[] filename`, the path execve was given (its
/// offset in the record in the low 16 bits, its length with the terminating zero in the high 16).
const EXEC_FILENAME: usize = 8;

/// A process starts a program (fires after the new image is in place, before it runs): if a
/// process selector names the program exactly, the process is selected here and user space told
/// what it started, so that a client that is done within the millisecond the agent's process
/// scan takes to find it (a `curl` in a script) is traced from its first syscall. The scan still
/// decides (globs, command lines, symlinks): this only makes a sure match early. A process the
/// kernel selected this way that starts an unnamed program leaves the selection.
#[tracepoint]
pub fn conn_sched_process_exec(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let Some(path) = CONN_EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; programs do not migrate while they run.
    let path = unsafe { &mut *path };
    // Exec sets the thread's name to the program's file name.
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_BYTES]);
    // SAFETY: plain lookups; the values are not dereferenced.
    let named = (read_exec_path(&ctx, path) && unsafe { CONN_EXEC_PATHS.get(&*path) }.is_some())
        || (comm[0] != 0 && CONN_EXEC_FILES.get(Key::new(8 * COMM_BYTES as u32, comm)).is_some());
    // SAFETY: plain lookup; the value is copied.
    let selected_by = unsafe { CONN_TGIDS.get(&tgid) }.copied();
    if !named {
        if selected_by == Some(EXEC_SELECTED) {
            let _ = CONN_TGIDS.remove(&tgid);
            // Its one thread's slot would still say selected until the epoch moves on.
            let _ = CONN_ARGS.remove(&id);
        }
        return 0;
    }
    if selected_by.is_none() {
        select_here(tgid, EXEC_SELECTED);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = ExecEvent {
        header: header(EVENT_EXEC, id, 0, 0, now),
        path: *path,
        comm,
    };
    if send::<ExecEvent>(&event).is_err() {
        count_drop(DROP_RING_FULL);
    }
    0
}

/// Reads the path the program was started by into `path`, zero-padded (all zeros when it does
/// not fit); false when it is no absolute path that fits.
#[inline(always)]
fn read_exec_path(ctx: &TracePointContext, path: &mut ExecPath) -> bool {
    path.bytes = [0; EXEC_PATH_BYTES];
    let loc: u32 = ctx_load(ctx, EXEC_FILENAME);
    if (loc >> 16) as usize > EXEC_PATH_BYTES {
        return false;
    }
    // SAFETY: the helper checks the address and writes at most the buffer's length, with a
    // terminating zero.
    let read = unsafe {
        generated::bpf_probe_read_kernel_str(
            path.bytes.as_mut_ptr().cast(),
            EXEC_PATH_BYTES as u32,
            ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize).cast(),
        )
    };
    read > 0 && path.bytes[0] == b'/'
}

#[path = "../formats.rs"]
mod formats;
#[path = "../runtime.rs"]
mod runtime;
