//! What an fd of a traced process is: inet socket or not, TCP or UDP, local and remote address.
//!
//! The kernel side cannot tell a socket from a file without kprobes or struct offsets, so it asks
//! user space once per unknown fd. The answer comes from the fd itself: `pidfd_getfd(2)` (Linux 5.6)
//! duplicates the process's fd into the agent, then `getsockname`, `getpeername` and `SO_TYPE` read
//! it. Hand-written on raw syscalls because neither nix nor std wraps pidfd_open/pidfd_getfd.
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    SockType, SockaddrLike, SockaddrStorage, getpeername, getsockname, getsockopt, sockopt,
};
use sonde_protocols::Transport;

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// An IPv4/IPv6 socket.
    Inet {
        transport: Transport,
        local: Option<SocketAddr>,
        /// None for unconnected sockets.
        remote: Option<SocketAddr>,
    },
    /// A file, pipe, unix socket…
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "cannot open a pidfd for process {pid}: {source}; the agent needs root (PTRACE_MODE_ATTACH) and Linux 5.6+"
    )]
    PidFd {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot duplicate fd {fd} of process {pid}: {source}")]
    GetFd {
        pid: u32,
        fd: u32,
        #[source]
        source: std::io::Error,
    },
}

impl SocketError {
    /// Gone: the process exited or closed the fd before it could be inspected (normal for short
    /// connections).
    pub fn is_gone(&self) -> bool {
        let source = match self {
            SocketError::PidFd { source, .. } | SocketError::GetFd { source, .. } => source,
        };
        matches!(source.raw_os_error(), Some(libc::ESRCH) | Some(libc::EBADF))
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, SocketError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return Err(SocketError::PidFd {
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_getfd(pidfd: &OwnedFd, pid: u32, fd: u32) -> Result<OwnedFd, SocketError> {
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags; it returns a new fd or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0u32) };
    if dup < 0 {
        return Err(SocketError::GetFd {
            pid,
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::new(IpAddr::V4(v4.ip()), v4.port()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::new(IpAddr::V6(v6.ip()), v6.port()))
}

/// Looks at fd `fd` of process `pid`.
pub fn inspect(pid: u32, fd: u32) -> Result<FdKind, SocketError> {
    let pidfd = pidfd_open(pid)?;
    let dup = pidfd_getfd(&pidfd, pid, fd)?;
    let raw = dup.as_raw_fd();
    // ENOTSOCK: not a socket at all.
    let Ok(local) = getsockname::<SockaddrStorage>(raw) else {
        return Ok(FdKind::Other);
    };
    let inet = matches!(
        local.family(),
        Some(nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6)
    );
    if !inet {
        return Ok(FdKind::Other);
    }
    let transport = match getsockopt(&dup, sockopt::SockType) {
        Ok(SockType::Datagram) => Transport::Udp,
        _ => Transport::Tcp,
    };
    let remote = getpeername::<SockaddrStorage>(raw)
        .ok()
        .as_ref()
        .and_then(to_std);
    Ok(FdKind::Inet {
        transport,
        local: to_std(&local),
        remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_tcp_socket_of_this_process_is_inet_with_both_addresses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let found = inspect(std::process::id(), client.as_raw_fd() as u32).unwrap();
        assert_eq!(
            found,
            FdKind::Inet {
                transport: Transport::Tcp,
                local: Some(client.local_addr().unwrap()),
                remote: Some(listener.local_addr().unwrap()),
            }
        );
    }

    #[test]
    fn udp_socket_is_inet_udp_and_a_file_is_other() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let found = inspect(std::process::id(), udp.as_raw_fd() as u32).unwrap();
        assert!(matches!(
            found,
            FdKind::Inet {
                transport: Transport::Udp,
                remote: None,
                ..
            }
        ));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            inspect(std::process::id(), file.as_raw_fd() as u32).unwrap(),
            FdKind::Other
        );
    }
}
