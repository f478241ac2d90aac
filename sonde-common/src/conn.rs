//! Structs shared by the protocol-tracing eBPF programs (`node-agent-ebpf/src/protocols`) and the
//! agent's protocols runtime (`node-agent/src/probes/protocols`).
//!
//! Kernel → user: events on the [`names::EVENTS_MAP`] ring buffer. Each starts with an
//! [`EventHeader`] whose `kind` says which struct it is: [`OpenEvent`], [`CloseEvent`],
//! [`ClassifyEvent`], [`PeerEvent`], [`ForkEvent`], [`LocalEvent`], [`ExecEvent`] or a data event
//! ([`DataEventHeader`] followed by `len` bytes). User → kernel: the filter maps (tgids, cgroup
//! ids, programs named exactly) and [`ConnInfo::state`] for fds the kernel could not classify.

/// Bytes of one data event; a syscall's buffers are split into chunks of at most this size.
/// A power of two so the eBPF side can bound lengths with a mask.
pub const DATA_CHUNK: usize = 4096;
/// Chunks emitted per syscall at most; bytes beyond are counted as truncated.
pub const MAX_CHUNKS_PER_SYSCALL: u32 = 4;
/// [`DataEventHeader::chunk`] of the data event that follows a truncated syscall's chunks: its
/// last bytes (up to [`TAIL_BYTES`]), or no data when they could not be read; the bytes between
/// are a gap known at once rather than when the next syscall of that direction comes (which may be
/// never, or the next request).
pub const TAIL_GAP_CHUNK: u32 = MAX_CHUNKS_PER_SYSCALL;
/// Bytes captured of the end of a truncated syscall, where its last message ends.
pub const TAIL_BYTES: u64 = 512;
/// Iovecs read per readv/writev/recvmsg/sendmsg at most; bytes in later ones count as truncated.
pub const MAX_IOVECS: u32 = 8;
/// Messages read per sendmmsg/recvmmsg at most (of each, up to `MAX_IOVECS` iovecs when the message
/// fits one chunk, else its first iovec); later ones count as truncated. Each message is reported
/// like a syscall of its own (chunk 0 first, `syscall_len` its length).
pub const MAX_MMSGS: u32 = 4;

/// [`DataEventHeader::syscall`] of recvmmsg (x86-64): a datagram syscall in practice, so bytes it
/// moved say the socket is UDP even when the fd could not be looked at.
pub const SYS_RECVMMSG: u32 = 299;
/// [`DataEventHeader::syscall`] of sendmmsg (x86-64); see [`SYS_RECVMMSG`].
pub const SYS_SENDMMSG: u32 = 307;

/// [`EventHeader::kind`]: a connection opened (connect/accept), with the peer address if known.
pub const EVENT_OPEN: u32 = 1;
/// [`EventHeader::kind`]: bytes of one syscall (one chunk).
pub const EVENT_DATA: u32 = 2;
/// [`EventHeader::kind`]: a traced connection's fd was closed, with its byte counts.
pub const EVENT_CLOSE: u32 = 3;
/// [`EventHeader::kind`]: a selected process did I/O on an fd of unknown type; user space must set
/// its [`ConnInfo::state`] to [`CONN_TRACE`] or [`CONN_IGNORE`].
pub const EVENT_CLASSIFY: u32 = 4;
/// [`EventHeader::kind`]: the following datagrams of a connection-less socket come from / go to
/// another peer ([`PeerEvent`]).
pub const EVENT_PEER: u32 = 5;
/// [`EventHeader::kind`]: a selected process forked ([`ForkEvent`]); the child inherits its fds.
pub const EVENT_FORK: u32 = 6;
/// [`EventHeader::kind`]: a traced TCP client connection was established, with its local address
/// ([`LocalEvent`]; from `sock:inet_sock_set_state`, before or after the connection's open event).
pub const EVENT_LOCAL: u32 = 7;
/// [`EventHeader::kind`]: a process started a program that a selector names exactly, and the
/// kernel selected it in its exec ([`ExecEvent`]).
pub const EVENT_EXEC: u32 = 8;

/// [`OpenEvent::flags`]: a datagram socket seen first in a recvfrom/recvmsg/recvmmsg returning a
/// source address (role server) or a sendto/sendmsg/sendmmsg with a destination (role client);
/// `remote_*` is that datagram's peer.
pub const OPEN_DATAGRAM: u32 = 1;
/// [`OpenEvent::flags`]: a TCP connect whose local address the kernel reports in a [`LocalEvent`]
/// (sent before this event for a connect that blocked until established, after it otherwise).
pub const OPEN_LOCAL_REPORTED: u32 = 2;
/// [`OpenEvent::flags`]: the kernel read the socket behind the fd: [`OpenEvent::local`] is its
/// local address and [`OPEN_UDP`] says whether it is a datagram socket (and the remote address
/// is the socket's peer when the syscall named none: an accept without an address buffer).
pub const OPEN_SOCKET_READ: u32 = 4;
/// [`OpenEvent::flags`], with [`OPEN_SOCKET_READ`]: the socket is a datagram (UDP) socket.
pub const OPEN_UDP: u32 = 8;

/// [`ConnInfo::state`]: an inet socket whose bytes are captured.
pub const CONN_TRACE: u32 = 1;
/// [`ConnInfo::state`]: an inet socket whose bytes are only counted (no protocol detected).
pub const CONN_STATS_ONLY: u32 = 2;
/// [`ConnInfo::state`]: not an inet socket (file, pipe, unix socket…): ignored.
pub const CONN_IGNORE: u32 = 3;
/// [`ConnInfo::state`]: waiting for user space to classify the fd; I/O meanwhile is captured (user
/// space drops it if the fd is no inet socket).
pub const CONN_PENDING: u32 = 4;

/// [`ConnInfo::role`] / [`OpenEvent::role`]: not known from connect/accept.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process connected.
pub const ROLE_CLIENT: u32 = 1;
/// The process accepted.
pub const ROLE_SERVER: u32 = 2;

/// [`DataEventHeader::direction`]: written by the traced process.
pub const DIR_EGRESS: u32 = 0;
/// [`DataEventHeader::direction`]: read by the traced process.
pub const DIR_INGRESS: u32 = 1;

/// Drop reason (index into the drop counters): the ring buffer was full.
pub const DROP_RING_FULL: u32 = 0;
/// Drop reason: a syscall moved more bytes than one event set carries (chunks or iovecs).
pub const DROP_TRUNCATED: u32 = 1;
/// Drop reason: the connection map was full.
pub const DROP_CONN_MAP_FULL: u32 = 2;
/// Drop reason: the per-thread syscall-argument map was full.
pub const DROP_ARGS_MAP_FULL: u32 = 3;
/// Drop reason: an fd of unknown type could not be sent to user space for classification (ring
/// full); its I/O is not captured until the next attempt.
pub const DROP_UNCLASSIFIED: u32 = 4;
/// Drop reason: user memory could not be read (paged out, bad pointer).
pub const DROP_READ_FAILED: u32 = 5;
/// Drop reason: the selected-tgid map was full when a selected process forked: the child is
/// traced only once the agent selects it.
pub const DROP_TGIDS_MAP_FULL: u32 = 6;
/// Drop reason: the syscall's connection was shed — the node's CPUs were saturated and the agent
/// over its share of them, so it captures fewer connections ([`SHED_SLOTS`]).
pub const DROP_SHED: u32 = 7;
/// Number of drop reasons (size of the drop counter array).
pub const DROP_REASONS: u32 = 8;

/// Metric label of each drop reason, by index.
pub const DROP_REASON_NAMES: [&str; DROP_REASONS as usize] = [
    "ring_full",
    "truncated",
    "conn_map_full",
    "args_map_full",
    "unclassified_fd",
    "read_failed",
    "tgids_map_full",
    "shed",
];

/// Connections fall into this many slots ([`shed_slot`]); while the node is saturated the agent
/// sheds the connections of the lowest N ([`names::SHED_MAP`]): their bytes are counted, not
/// captured. A connection keeps its slot, so a shed one is shed whole, not every other syscall.
pub const SHED_SLOTS: u32 = 64;

/// The shedding slot of a connection: a multiplicative hash of its identity, so that the
/// connections of one process (fds in sequence) spread over the slots.
#[inline(always)]
pub const fn shed_slot(tgid: u32, fd: u32, generation: u64) -> u32 {
    let mixed = ((tgid as u64) << 32 | fd as u64) ^ generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as u32 & (SHED_SLOTS - 1)
}

/// Words of the selection prefilter ([`names::FILTER_MAP`]): a bitmap of [`FILTER_BITS`] bits with
/// the bit of every selected tgid and cgroup id set ([`filter_bit_tgid`], [`filter_bit_cgroup`]).
/// Every process on the node passes the syscall hooks; an array word is a load the verifier
/// inlines, where the exact hash maps cost a hash and a bucket walk each, so a clear bit settles
/// "not selected" for almost all of them. A set bit may be another key's: the exact maps decide.
pub const FILTER_WORDS: u32 = 1024;
/// Bits of the selection prefilter (a power of two).
pub const FILTER_BITS: u32 = FILTER_WORDS * 64;

/// Prefilter bit of a tgid: pids are handed out in sequence, so their low bits spread them.
#[inline(always)]
pub const fn filter_bit_tgid(tgid: u32) -> u32 {
    tgid & (FILTER_BITS - 1)
}

/// Prefilter bit of a cgroup v2 id (a kernfs node id): multiplicative hashing spreads ids that
/// differ in any bits.
#[inline(always)]
pub const fn filter_bit_cgroup(id: u64) -> u32 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32 & (FILTER_BITS - 1)
}

/// Key of the connection map: a process's fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// An IPv4/IPv6 socket address as the kernel side reads it from a `sockaddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerAddr {
    /// AF_INET 2, AF_INET6 10; 0: unknown.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PeerAddr>() == 20);

/// Value of the connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// Monotonic ns at open: with (tgid, fd) it names one connection across fd reuse.
    pub generation: u64,
    /// Bytes written by the process since open (all of them, captured or not).
    pub bytes_sent: u64,
    /// Bytes read by the process since open.
    pub bytes_recv: u64,
    /// One of the `CONN_*` states.
    pub state: u32,
    /// One of the `ROLE_*` values.
    pub role: u32,
    /// Datagram sockets: the peer of the last datagram with an address (a [`PeerEvent`] is sent
    /// when it changes). Zero otherwise.
    pub peer: PeerAddr,
    /// Syscalls truncated while the fd was [`CONN_PENDING`]: not counted as drops yet, because a
    /// file is no connection; user space counts them once it knows the fd is a socket.
    pub pending_truncated: u32,
}
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 56);

/// Start of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `EVENT_*` kinds.
    pub kind: u32,
    pub tgid: u32,
    /// Monotonic ns (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) at the syscall's exit; for the data
    /// events of a send ([`DIR_EGRESS`]: write, writev, send*, sendfile) at its entry, since its
    /// bytes may reach the peer (loopback, veth), and be answered, before it returns. Events of
    /// one connection come in the ring's order, which these times need not follow.
    pub ts_ns: u64,
    /// cgroup v2 id of the thread.
    pub cgroup_id: u64,
    pub fd: u32,
    /// Thread id.
    pub tid: u32,
    /// [`ConnInfo::generation`] of the connection.
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 40);

/// A connection opened by connect (client) or accept (server).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenEvent {
    pub header: EventHeader,
    /// `ROLE_CLIENT` or `ROLE_SERVER`.
    pub role: u32,
    /// Address family of `remote_addr` (AF_INET 2, AF_INET6 10; 0: unknown).
    pub family: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub remote_addr: [u8; 16],
    /// For accepted connections: the listening socket's fd, whose address is the local one (the
    /// accepted fd may be closed before user space can look at it). `u32::MAX` otherwise.
    pub listen_fd: u32,
    /// `OPEN_*` bits.
    pub flags: u32,
    /// With [`OPEN_SOCKET_READ`]: the socket's local address when it opened (a client's source
    /// address and port; for an unconnected socket the address may be the wildcard).
    pub local: PeerAddr,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<OpenEvent>() == 96);

/// Byte offsets of the kernel struct members the eBPF side follows from the current task to what
/// is behind one of its fds (an inet socket or not; a socket's type and both its addresses), for
/// the running kernel (read from its BTF by the agent at load time). `fields_known` 0: no BTF;
/// the agent looks at the fd itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`.
    pub fdtable_fd: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `file.private_data` (the `struct socket` of a socket's file).
    pub file_private_data: u32,
    /// `socket.type` (SOCK_STREAM 1, SOCK_DGRAM 2).
    pub socket_type: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock.__sk_common` plus `sock_common.skc_family`.
    pub skc_family: u32,
    /// … `skc_rcv_saddr` (IPv4, network order).
    pub skc_rcv_saddr: u32,
    /// … `skc_num` (local port, host order).
    pub skc_num: u32,
    /// … `skc_v6_rcv_saddr`.
    pub skc_v6_rcv_saddr: u32,
    /// … `skc_daddr` (the peer's IPv4, network order).
    pub skc_daddr: u32,
    /// … `skc_dport` (the peer's port, network order).
    pub skc_dport: u32,
    /// … `skc_v6_daddr`.
    pub skc_v6_daddr: u32,
    /// 1 when every offset above is known.
    pub fields_known: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 68);

/// The next datagrams of a connection-less socket come from / go to `peer` (sent before their
/// data events when the peer differs from the previous datagram's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEvent {
    pub header: EventHeader,
    pub peer: PeerAddr,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PeerEvent>() == 64);

/// The local address of the TCP client connection (`header.tgid`, `header.fd`): the source
/// address and port the kernel chose. `header.cgroup_id` and `header.tid` are 0 (it may be sent
/// from another task's context), `header.generation` too (it may come before the open event).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalEvent {
    pub header: EventHeader,
    pub local: PeerAddr,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LocalEvent>() == 64);

/// A traced connection was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// [`ConnInfo::pending_truncated`] at close.
    pub pending_truncated: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CloseEvent>() == 64);

/// I/O on an fd not seen opened (generation in the header). With [`CLASSIFY_INET`] the kernel read
/// the inet socket behind it: its [`ConnInfo`] is [`CONN_TRACE`] already and `local`/`remote` are
/// its addresses, so nobody needs to look at the fd (which a short connection may have closed, and
/// its process left, by then). Without, the entry is [`CONN_PENDING`] and user space looks at it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassifyEvent {
    pub header: EventHeader,
    /// `CLASSIFY_*` bits.
    pub flags: u32,
    pub _pad: u32,
    pub local: PeerAddr,
    /// The peer; zero for an unconnected datagram socket.
    pub remote: PeerAddr,
}
const _: () = assert!(core::mem::size_of::<ClassifyEvent>() == 88);

/// [`ClassifyEvent::flags`]: the fd is an inet socket with the addresses the event carries.
pub const CLASSIFY_INET: u32 = 1;
/// [`ClassifyEvent::flags`], with [`CLASSIFY_INET`]: a datagram (UDP) socket.
pub const CLASSIFY_UDP: u32 = 2;

/// A selected process forked a child process (not a thread): the child shares the parent's open
/// fds, so a socket the parent accepted (a PostgreSQL postmaster's) is the child's connection too.
/// `header.tgid` is the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// The child's pid (its tgid).
    pub child: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 48);

/// Bytes of an [`ExecPath`], its terminating zero included.
pub const EXEC_PATH_BYTES: usize = 64;

/// Bytes of a thread's name (`TASK_COMM_LEN`), its terminating zero included. Exec sets it to the
/// started program's file name, cut to 15 bytes.
pub const COMM_BYTES: usize = 16;

/// Longest file name [`names::EXEC_FILES_MAP`] matches whole: a 15-byte thread name may have been
/// cut. (The start of a file name may be 15 bytes long.)
pub const EXEC_FILE_NAME_MAX: usize = COMM_BYTES - 2;

/// [`names::TGIDS_MAP`] value of a process the kernel selected in its exec (see
/// [`names::EXEC_PATHS_MAP`]); a key selected by user space holds its own tgid, a child the kernel
/// selected its ancestor's. No tgid is this large.
pub const EXEC_SELECTED: u32 = u32::MAX;

/// Key of [`names::EXEC_PATHS_MAP`]: an absolute path a process selector names, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecPath {
    pub bytes: [u8; EXEC_PATH_BYTES],
}

impl ExecPath {
    /// `path` as a key: None if it does not fit (with its terminating zero) or holds a zero byte.
    pub fn new(path: &[u8]) -> Option<ExecPath> {
        if path.len() >= EXEC_PATH_BYTES || path.contains(&0) {
            return None;
        }
        let mut bytes = [0; EXEC_PATH_BYTES];
        bytes[..path.len()].copy_from_slice(path);
        Some(ExecPath { bytes })
    }

    /// The path without its padding.
    pub fn as_bytes(&self) -> &[u8] {
        until_zero(&self.bytes)
    }
}

/// `bytes` up to its first zero.
pub fn until_zero(bytes: &[u8]) -> &[u8] {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..len]
}

/// A process started a program that a selector names exactly (by [`names::EXEC_PATHS_MAP`] or
/// [`names::EXEC_FILES_MAP`]) and was selected in its exec: until the agent's process scan finds
/// it, user space routes its events by what it started. `header.tgid` is the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The path it was started by, if it fits an [`ExecPath`] (else zeros).
    pub path: ExecPath,
    /// The thread's name: the program's file name, cut to 15 bytes.
    pub comm: [u8; COMM_BYTES],
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 40 + EXEC_PATH_BYTES + COMM_BYTES);

/// Header of a data event; `len` bytes of data follow it in the same ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEventHeader {
    pub header: EventHeader,
    /// Bytes the whole syscall moved (its return value).
    pub syscall_len: u64,
    /// Offset of this chunk's first byte in the connection's stream of this direction.
    pub stream_pos: u64,
    /// `DIR_EGRESS` or `DIR_INGRESS`.
    pub direction: u32,
    /// Syscall number (x86-64), for diagnostics.
    pub syscall: u32,
    /// Data bytes that follow (≤ [`DATA_CHUNK`]). 0 with `syscall_len` > 0: the syscall moved bytes
    /// that never passed through user memory (sendfile), or bytes beyond what was captured
    /// ([`TAIL_GAP_CHUNK`] when its tail was unreadable); they are a gap ending at `stream_pos`.
    pub len: u32,
    /// Index of this chunk among the syscall's chunks (0: the first; [`TAIL_GAP_CHUNK`]: the end
    /// of a truncated syscall).
    pub chunk: u32,
}
const _: () = assert!(core::mem::size_of::<DataEventHeader>() == 72);

/// A data event as the eBPF side builds it in per-CPU scratch memory; only the header and the first
/// `header.len` bytes are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: DataEventHeader,
    pub data: [u8; DATA_CHUNK],
}
const _: () = assert!(core::mem::size_of::<DataEvent>() == 72 + DATA_CHUNK);

/// Names shared by the eBPF object and the loader, so a rename breaks the build, not the agent.
pub mod names {
    /// Ring buffer of events.
    pub const EVENTS_MAP: &str = "CONN_EVENTS";
    /// `HashMap<u32 tgid, u32>`: selected processes.
    pub const TGIDS_MAP: &str = "CONN_TGIDS";
    /// `HashMap<`[`super::ExecPath`]`, u32>`: absolute paths of programs whose processes the
    /// kernel selects in their exec — a selector names them exactly, and the agent's process scan
    /// would come a millisecond or more after the exec, after a short-lived client is done.
    pub const EXEC_PATHS_MAP: &str = "CONN_EXEC_PATHS";
    /// `LpmTrie<[u8; COMM_BYTES], u32>`: file names (ending with their zero) and starts of file
    /// names (without) of programs whose processes the kernel selects in their exec, matched
    /// against the thread's name.
    pub const EXEC_FILES_MAP: &str = "CONN_EXEC_FILES";
    /// `HashMap<u64 cgroup id, u32>`: selected cgroups (v2 ids).
    pub const CGROUPS_MAP: &str = "CONN_CGROUPS";
    /// `Array<u64>` of [`super::FILTER_WORDS`]: the selection prefilter bitmap.
    pub const FILTER_MAP: &str = "CONN_FILTER";
    /// `Array<u64>` of one: the selection epoch, bumped whenever a key leaves the filter maps
    /// (per-thread argument slots of an older epoch are checked against the maps again).
    pub const EPOCH_MAP: &str = "CONN_EPOCH";
    /// `HashMap<ConnKey, ConnInfo>`.
    pub const CONNS_MAP: &str = "CONN_CONNS";
    /// `PerCpuArray<u64>` of [`super::DROP_REASONS`] drop counters.
    pub const DROPS_MAP: &str = "CONN_DROPS";
    /// `Array<u32>` of one: how many of the [`super::SHED_SLOTS`] slots are shed (0: none).
    pub const SHED_MAP: &str = "CONN_SHED";
    /// Global `u32`: the agent's own tgid, never traced.
    pub const AGENT_TGID_GLOBAL: &str = "CONN_AGENT_TGID";
    /// Global `u32`: 1 traces every process (cluster-wide auto-telemetry).
    pub const TRACE_ALL_GLOBAL: &str = "CONN_TRACE_ALL";
    /// Global [`super::SockOffsets`]: this kernel's struct layout, for what is behind an fd.
    pub const SOCK_OFFSETS_GLOBAL: &str = "CONN_SOCK_OFFSETS";
    /// Syscall tracepoints (`syscalls:<name>`) and the program attached to each.
    pub const TRACEPOINTS: &[(&str, &str)] = &[
        ("sys_enter_read", "conn_enter_read"),
        ("sys_exit_read", "conn_exit_data"),
        ("sys_enter_write", "conn_enter_write"),
        ("sys_exit_write", "conn_exit_data"),
        ("sys_enter_readv", "conn_enter_readv"),
        ("sys_exit_readv", "conn_exit_data"),
        ("sys_enter_writev", "conn_enter_writev"),
        ("sys_exit_writev", "conn_exit_data"),
        ("sys_enter_recvfrom", "conn_enter_recvfrom"),
        ("sys_exit_recvfrom", "conn_exit_data"),
        ("sys_enter_sendto", "conn_enter_sendto"),
        ("sys_exit_sendto", "conn_exit_data"),
        ("sys_enter_recvmsg", "conn_enter_recvmsg"),
        ("sys_exit_recvmsg", "conn_exit_data"),
        ("sys_enter_sendmsg", "conn_enter_sendmsg"),
        ("sys_exit_sendmsg", "conn_exit_data"),
        ("sys_enter_connect", "conn_enter_connect"),
        ("sys_exit_connect", "conn_exit_connect"),
        ("sys_enter_accept", "conn_enter_accept"),
        ("sys_exit_accept", "conn_exit_accept"),
        ("sys_enter_accept4", "conn_enter_accept"),
        ("sys_exit_accept4", "conn_exit_accept"),
        ("sys_enter_recvmmsg", "conn_enter_recvmmsg"),
        ("sys_exit_recvmmsg", "conn_exit_mmsg"),
        ("sys_enter_sendmmsg", "conn_enter_sendmmsg"),
        ("sys_exit_sendmmsg", "conn_exit_mmsg"),
        ("sys_enter_sendfile64", "conn_enter_sendfile"),
        ("sys_exit_sendfile64", "conn_exit_sendfile"),
        ("sys_enter_close", "conn_enter_close"),
    ];
    /// Other tracepoints: (category, name, program).
    pub const TASK_TRACEPOINTS: &[(&str, &str, &str)] = &[
        ("task", "task_newtask", "conn_task_newtask"),
        ("sched", "sched_process_exit", "conn_sched_process_exit"),
        ("sched", "sched_process_exec", "conn_sched_process_exec"),
        ("sock", "inet_sock_set_state", "conn_sock_set_state"),
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls below): the structs are repr(C), Copy, have no implicit padding (sizes asserted
    // above, padding fields explicit) and every bit pattern of their integer fields is valid.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::OpenEvent {}
    unsafe impl aya::Pod for super::CloseEvent {}
    unsafe impl aya::Pod for super::ClassifyEvent {}
    unsafe impl aya::Pod for super::PeerEvent {}
    unsafe impl aya::Pod for super::ForkEvent {}
    unsafe impl aya::Pod for super::ExecPath {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::LocalEvent {}
    unsafe impl aya::Pod for super::PeerAddr {}
    unsafe impl aya::Pod for super::DataEventHeader {}
}
