//! Protocol-tracing capture from syscall tracepoints only (no kprobes, no fentry).
//!
//! Every enter hook first checks whether the current process is selected (its tgid, then its cgroup v2
//! id, in maps the agent maintains); any other process pays one or two hash lookups and leaves. For a
//! selected process the enter hook stashes the arguments per thread; the exit hook reads them back
//! with the return value and acts:
//! - connect/accept(4): a new connection (tgid, fd, generation) with its role and peer address;
//! - read/write/readv/writev/recv*/send*: the first bytes moved, in chunks of `DATA_CHUNK`, with the
//!   position in the connection's stream so user space sees every gap;
//! - close: the connection's byte counts.
//!
//! Socket vs non-socket fds: fds from connect/accept are known sockets (non-inet families are ignored).
//! Any other fd a selected process does I/O on is marked pending and reported once; user space looks
//! at the fd (pidfd_getfd) and sets the state to traced or ignored, so files, pipes and unix sockets
//! cost one lookup per syscall afterwards. Every loss is counted per reason in `CONN_DROPS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_buf,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use sonde_common::conn::{
    CONN_IGNORE, CONN_PENDING, CONN_STATS_ONLY, CONN_TRACE, ClassifyEvent, CloseEvent, ConnInfo,
    ConnKey, DATA_CHUNK, DIR_EGRESS, DIR_INGRESS, DROP_ARGS_MAP_FULL, DROP_CONN_MAP_FULL,
    DROP_READ_FAILED, DROP_REASONS, DROP_RING_FULL, DROP_TRUNCATED, DROP_UNCLASSIFIED, DataEvent,
    EVENT_CLASSIFY, EVENT_CLOSE, EVENT_DATA, EVENT_OPEN, EventHeader, MAX_CHUNKS_PER_SYSCALL,
    MAX_IOVECS, OpenEvent, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN,
};

/// The agent's own tgid: never traced (its HTTP answers would feed back into its tables).
#[unsafe(no_mangle)]
static CONN_AGENT_TGID: u32 = 0;
/// 1: trace every process (cluster-wide auto-telemetry), not only the selected ones.
#[unsafe(no_mangle)]
static CONN_TRACE_ALL: u32 = 0;

#[map]
static CONN_EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
#[map]
static CONN_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);
#[map]
static CONN_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);
#[map]
static CONN_CONNS: HashMap<ConnKey, ConnInfo> = HashMap::with_max_entries(65536, 0);
#[map]
static CONN_ARGS: HashMap<u64, Args> = HashMap::with_max_entries(16384, 0);
#[map]
static CONN_SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CONN_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

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

/// How the stashed buffer argument is laid out.
const BUF_PLAIN: u32 = 0;
const BUF_IOVEC: u32 = 1;
const BUF_MSGHDR: u32 = 2;

/// Unread bytes in the ring above which a write wakes the agent up; below, the agent drains the ring
/// on its own timer. One wake-up per event would cost a context switch per syscall.
const WAKEUP_BYTES: u64 = 256 << 10;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

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
    // SAFETY: syscall tracepoint records hold six u64 arguments after a 16-byte header; the helper
    // reads within the record the kernel hands the program.
    unsafe { ctx.read_at::<u64>(arg_offset(n)) }.unwrap_or(0)
}

/// Ring-buffer output flags: wake the agent only when enough is waiting.
#[inline(always)]
fn wakeup() -> u64 {
    if CONN_EVENTS.query(BPF_RB_AVAIL_DATA) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(slot) = CONN_DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while they run.
        unsafe { *slot += 1 };
    }
}

/// The early exit every hook starts with: is this process traced?
#[inline(always)]
fn selected(tgid: u32) -> bool {
    // SAFETY: plain lookups; the values are not dereferenced.
    if unsafe { CONN_TGIDS.get(&tgid) }.is_some() {
        return true;
    }
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { CONN_CGROUPS.get(&cgroup) }.is_some() {
        return true;
    }
    // SAFETY: reading u32 globals the loader may rewrite in .rodata; volatile keeps the loads.
    let all = unsafe { core::ptr::read_volatile(&CONN_TRACE_ALL) };
    all != 0 && tgid != unsafe { core::ptr::read_volatile(&CONN_AGENT_TGID) }
}

#[inline(always)]
fn stash(fd: u64, buf: u64, count: u64, syscall: u32, layout: u32) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !selected(tgid) {
        return 0;
    }
    if layout != u32::MAX {
        // Data syscalls on fds known not to be inet sockets stop here.
        let key = ConnKey {
            tgid,
            fd: fd as u32,
        };
        // SAFETY: the value is copied out at once.
        if let Some(info) = unsafe { CONN_CONNS.get(&key) } {
            if info.state == CONN_IGNORE {
                return 0;
            }
        }
    }
    let args = Args {
        fd,
        buf,
        count,
        syscall,
        layout,
    };
    if CONN_ARGS.insert(&id, &args, 0).is_err() {
        count_drop(DROP_ARGS_MAP_FULL);
    }
    0
}

/// Takes the arguments stashed by this thread's enter hook (None for every process not traced).
#[inline(always)]
fn take_args(id: u64) -> Option<Args> {
    // SAFETY: the value is copied before the entry is removed.
    let args = unsafe { CONN_ARGS.get(&id) }.copied()?;
    let _ = CONN_ARGS.remove(&id);
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

#[tracepoint]
pub fn conn_enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_RECVFROM,
        BUF_PLAIN,
    )
}

#[tracepoint]
pub fn conn_enter_sendto(ctx: TracePointContext) -> u32 {
    stash(
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
        SYS_SENDTO,
        BUF_PLAIN,
    )
}

#[tracepoint]
pub fn conn_enter_recvmsg(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, 0), arg(&ctx, 1), 0, SYS_RECVMSG, BUF_MSGHDR)
}

#[tracepoint]
pub fn conn_enter_sendmsg(ctx: TracePointContext) -> u32 {
    stash(arg(&ctx, 0), arg(&ctx, 1), 0, SYS_SENDMSG, BUF_MSGHDR)
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
    // SAFETY: `ret` is the i64 at RET_OFFSET of every sys_exit record.
    let ret = unsafe { ctx.read_at::<i64>(RET_OFFSET) }.unwrap_or(-1);
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    open(id, args.fd as u32, args.buf, ROLE_CLIENT, u32::MAX);
    0
}

#[tracepoint]
pub fn conn_exit_accept(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    // SAFETY: as in conn_exit_connect.
    let ret = unsafe { ctx.read_at::<i64>(RET_OFFSET) }.unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    open(id, ret as u32, args.buf, ROLE_SERVER, args.fd as u32);
    0
}

/// Records a new connection on `fd`, replacing whatever the fd was before, and reports it.
/// `sockaddr` (user memory, may be null) is the peer address.
#[inline(always)]
fn open(id: u64, fd: u32, sockaddr: u64, role: u32, listen_fd: u32) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut event = OpenEvent {
        header: header(EVENT_OPEN, id, fd, now, now),
        role,
        family: 0,
        remote_port: 0,
        remote_addr: [0; 16],
        listen_fd,
        _pad: 0,
    };
    if sockaddr != 0 {
        // sockaddr_in: family u16, port u16 (big endian), addr [u8; 4];
        // sockaddr_in6: family, port, flowinfo u32, addr [u8; 16].
        // SAFETY: reads of user memory through the checked helper; failures leave zeros.
        let family = unsafe { bpf_probe_read_user(sockaddr as *const u16) }.unwrap_or(0);
        let port = unsafe { bpf_probe_read_user((sockaddr + 2) as *const u16) }.unwrap_or(0);
        event.family = family;
        event.remote_port = u16::from_be(port);
        if family == AF_INET {
            let _ = unsafe {
                bpf_probe_read_user_buf((sockaddr + 4) as *const u8, &mut event.remote_addr[..4])
            };
        } else if family == AF_INET6 {
            let _ = unsafe {
                bpf_probe_read_user_buf((sockaddr + 8) as *const u8, &mut event.remote_addr)
            };
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
    };
    if CONN_CONNS.insert(&key, &info, 0).is_err() {
        count_drop(DROP_CONN_MAP_FULL);
        return;
    }
    if state == CONN_TRACE && CONN_EVENTS.output::<OpenEvent>(&event, wakeup()).is_err() {
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
    if info.state != CONN_TRACE && info.state != CONN_STATS_ONLY {
        return 0;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = CloseEvent {
        header: header(EVENT_CLOSE, id, key.fd, info.generation, now),
        bytes_sent: info.bytes_sent,
        bytes_recv: info.bytes_recv,
    };
    if CONN_EVENTS.output::<CloseEvent>(&event, wakeup()).is_err() {
        count_drop(DROP_RING_FULL);
    }
    0
}

/// Exit of every data syscall.
#[tracepoint]
pub fn conn_exit_data(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(args) = take_args(id) else { return 0 };
    // SAFETY: as in conn_exit_connect.
    let ret = unsafe { ctx.read_at::<i64>(RET_OFFSET) }.unwrap_or(-1);
    if ret <= 0 {
        return 0;
    }
    let ret = ret as u64;
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    let Some(info) = CONN_CONNS.get_ptr_mut(&key) else {
        unknown_fd(id, key);
        return 0;
    };
    // SAFETY: a pointer into the map value, valid for this program run; concurrent updates of the
    // same fd from two threads may lose a count, which only skews byte statistics.
    let info = unsafe { &mut *info };
    let egress = matches!(
        args.syscall,
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG
    );
    let pos = if egress {
        let pos = info.bytes_sent;
        info.bytes_sent = pos + ret;
        pos
    } else {
        let pos = info.bytes_recv;
        info.bytes_recv = pos + ret;
        pos
    };
    match info.state {
        CONN_TRACE => {}
        CONN_PENDING => {
            count_drop(DROP_UNCLASSIFIED);
            return 0;
        }
        _ => return 0,
    }
    let generation = info.generation;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(event) = CONN_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, used only for the duration of this program run.
    let event = unsafe { &mut *event };
    event.header.header = header(EVENT_DATA, id, key.fd, generation, now);
    event.header.syscall_len = ret;
    event.header.direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
    event.header.syscall = args.syscall;
    let mut budget = MAX_CHUNKS_PER_SYSCALL;
    let captured = match args.layout {
        BUF_PLAIN => emit_buffer(event, args.buf, ret, pos, &mut budget),
        BUF_IOVEC => emit_iovecs(event, args.buf, args.count, ret, pos, &mut budget),
        BUF_MSGHDR => {
            // struct msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: reads of user memory through the checked helper.
            let iov = unsafe { bpf_probe_read_user((args.buf + 16) as *const u64) }.unwrap_or(0);
            let n = unsafe { bpf_probe_read_user((args.buf + 24) as *const u64) }.unwrap_or(0);
            emit_iovecs(event, iov, n, ret, pos, &mut budget)
        }
        _ => ret,
    };
    if captured < ret {
        count_drop(DROP_TRUNCATED);
    }
    0
}

/// First I/O of a selected process on an fd it did not get from connect/accept: ask user space.
#[inline(always)]
fn unknown_fd(id: u64, key: ConnKey) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let info = ConnInfo {
        generation: now,
        bytes_sent: 0,
        bytes_recv: 0,
        state: CONN_PENDING,
        role: ROLE_UNKNOWN,
    };
    if CONN_CONNS.insert(&key, &info, 0).is_err() {
        count_drop(DROP_CONN_MAP_FULL);
        return;
    }
    let event = ClassifyEvent {
        header: header(EVENT_CLASSIFY, id, key.fd, now, now),
    };
    if CONN_EVENTS
        .output::<ClassifyEvent>(&event, wakeup())
        .is_err()
    {
        count_drop(DROP_RING_FULL);
        // Without the event nobody would ever classify the fd: forget it so the next I/O asks again.
        let _ = CONN_CONNS.remove(&key);
    }
    count_drop(DROP_UNCLASSIFIED);
}

/// Emits `len` bytes at user address `buf` in chunks; returns the bytes emitted.
#[inline(always)]
fn emit_buffer(event: &mut DataEvent, buf: u64, len: u64, pos: u64, budget: &mut u32) -> u64 {
    let mut done: u64 = 0;
    for _ in 0..MAX_CHUNKS_PER_SYSCALL {
        if done >= len || *budget == 0 {
            break;
        }
        *budget -= 1;
        event.header.chunk = MAX_CHUNKS_PER_SYSCALL - 1 - *budget;
        let n = len - done;
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
        // struct iovec { void *iov_base; size_t iov_len; }
        // SAFETY: reads of user memory through the checked helper.
        let base = unsafe { bpf_probe_read_user((iov + 16 * i) as *const u64) }.unwrap_or(0);
        let size = unsafe { bpf_probe_read_user((iov + 16 * i + 8) as *const u64) }.unwrap_or(0);
        let take = if size > len - done { len - done } else { size };
        let emitted = emit_buffer(event, base, take, pos + done, budget);
        done += emitted;
        if emitted < take {
            break;
        }
    }
    done
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
    if CONN_EVENTS.output::<[u8]>(bytes, wakeup()).is_err() {
        count_drop(DROP_RING_FULL);
        return false;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
