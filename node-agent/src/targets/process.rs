//! A snapshot of the host's processes from /proc: pid, executable, command line, and the container
//! each one runs in.
//!
//! Hand-written: three small reads per pid; the `procfs` crate would bring much more than that.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    TargetsError,
    cgroup::{self, ContainerIdentity},
};

/// One host process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Executable path inside the process's root (readlink of /proc/<pid>/exe, ` (deleted)` removed).
    pub exe: PathBuf,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// The Kubernetes container the process runs in, if any.
    pub container: Option<ContainerIdentity>,
}

/// Reads every process under `proc_root` (normally `/proc`). Kernel threads (no executable) and
/// processes that exit while being read are skipped: such races are normal.
pub fn scan_processes(proc_root: &Path) -> Result<Vec<ProcessInfo>, TargetsError> {
    let entries = fs::read_dir(proc_root).map_err(|source| TargetsError::Proc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut processes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TargetsError::Proc {
            path: proc_root.to_path_buf(),
            source,
        })?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(process) = read_process(&entry.path(), pid) {
            processes.push(process);
        }
    }
    processes.sort_by_key(|p| p.pid);
    Ok(processes)
}

/// None when the process is a kernel thread, has exited, or cannot be read (e.g. a zombie).
fn read_process(dir: &Path, pid: u32) -> Option<ProcessInfo> {
    let exe = fs::read_link(dir.join("exe")).ok()?;
    let exe = strip_deleted(exe);
    let cmdline = fs::read(dir.join("cmdline")).ok()?;
    let cmdline = join_cmdline(&cmdline);
    let container = match fs::read_to_string(dir.join("cgroup")) {
        Ok(contents) => cgroup::identity_from_file(&contents),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => None,
    };
    Some(ProcessInfo {
        pid,
        exe,
        cmdline,
        container,
    })
}

/// The kernel appends ` (deleted)` to the link of a replaced executable; selectors name the path.
fn strip_deleted(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(stripped) => PathBuf::from(stripped),
        None => exe,
    }
}

/// NUL-separated arguments → one space-separated string (without the trailing separator).
fn join_cmdline(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    String::from_utf8_lossy(trimmed).replace('\0', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_arguments_are_joined_by_spaces() {
        assert_eq!(
            join_cmdline(b"nginx: worker process\0"),
            "nginx: worker process"
        );
        assert_eq!(join_cmdline(b"sleep\x0030\0"), "sleep 30");
        assert_eq!(join_cmdline(b""), "");
    }

    #[test]
    fn deleted_executables_keep_their_path() {
        assert_eq!(
            strip_deleted("/usr/bin/app (deleted)".into()),
            PathBuf::from("/usr/bin/app")
        );
        assert_eq!(
            strip_deleted("/usr/bin/app".into()),
            PathBuf::from("/usr/bin/app")
        );
    }

    #[test]
    fn scanning_this_machine_finds_this_process_and_no_kernel_threads() {
        let processes = scan_processes(Path::new("/proc")).unwrap();
        let me = processes
            .iter()
            .find(|p| p.pid == std::process::id())
            .unwrap();
        assert_eq!(me.exe, std::env::current_exe().unwrap());
        // pid 2 is kthreadd on Linux.
        assert!(processes.iter().all(|p| p.pid != 2));
    }
}
