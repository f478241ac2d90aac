//! The file a process actually runs.
//!
//! A path names whatever is on disk now: after a deploy by rename-over, or `go build -o` over a
//! running binary, it names the new build while the process still runs the old one (whose DWARF
//! layout and code offsets may differ); after a delete it names nothing. `/proc/<pid>/exe` is a
//! magic link to the running file itself, even when renamed over or deleted. The agent opens it once
//! and uses that one handle for the binary's identity (`fstat`), its analysis and its uprobes (the
//! kernel follows `/proc/self/fd/<n>` to the same inode), so the three cannot disagree even if the
//! process execs meanwhile.
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A binary's identity (device, inode): processes of one executable share one analysis.
pub type FileKey = (u64, u64);

#[derive(Debug, thiserror::Error)]
pub enum RunningFileError {
    #[error(
        "pid {pid} has exited (no /proc/{pid}/exe for {exe}); nothing to trace, it is dropped on the next target rescan"
    )]
    Exited { pid: u32, exe: PathBuf },
    #[error(
        "cannot open /proc/{pid}/exe, the file pid {pid} runs ({exe}{deleted}): {source}; \
         the agent needs root with CAP_SYS_PTRACE and the host's /proc (hostPID: true) to open another process's executable"
    )]
    Open {
        pid: u32,
        exe: PathBuf,
        deleted: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot stat /proc/{pid}/exe, the file pid {pid} runs ({exe}): {source}; is its filesystem still mounted?"
    )]
    Stat {
        pid: u32,
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The open executable of one process.
#[derive(Debug)]
pub struct RunningFile {
    file: File,
    pub key: FileKey,
}

impl RunningFile {
    /// Opens the executable `pid` runs; `exe` is its path as the targets see it, for messages.
    pub fn open(pid: u32, exe: &std::path::Path) -> Result<RunningFile, RunningFileError> {
        let link = link(pid);
        let file = File::open(&link).map_err(|source| {
            // No executable: the process has exited (or is a zombie, or a kernel thread).
            if source.kind() == ErrorKind::NotFound {
                return RunningFileError::Exited {
                    pid,
                    exe: exe.to_owned(),
                };
            }
            // The kernel marks an executable removed from disk in the link's target.
            let deleted = std::fs::read_link(&link)
                .ok()
                .and_then(|t| t.to_str().map(|t| t.ends_with(" (deleted)")))
                .unwrap_or(false);
            RunningFileError::Open {
                pid,
                exe: exe.to_owned(),
                deleted: if deleted {
                    ", since deleted from disk"
                } else {
                    ""
                },
                source,
            }
        })?;
        let meta = file.metadata().map_err(|source| RunningFileError::Stat {
            pid,
            exe: exe.to_owned(),
            source,
        })?;
        Ok(RunningFile {
            file,
            key: (meta.dev(), meta.ino()),
        })
    }

    /// A path to the open file, valid while `self` lives; opening it, or attaching a uprobe to it,
    /// reaches the running file's inode.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// The identity of the file `pid` runs now, without opening it (to notice an exec).
pub fn running_key(pid: u32) -> Option<FileKey> {
    std::fs::metadata(link(pid))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn link(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}
