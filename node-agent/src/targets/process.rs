//! A snapshot of the host's processes from /proc: pid, executable, command line, and the container
//! each one runs in.
//!
//! Reading a process costs three small reads (`exe`, `cmdline`, `cgroup`; a fourth, `environ`, for
//! a program started by a name that is not its executable's), and listing /proc a
//! directory read of every pid; a node runs thousands of processes and the agent rescans every two
//! seconds and after execs, so [`ProcessScanner`] rereads only the processes the kernel named since
//! its last scan ([`ProcessWatch`]: new processes, execs, exits) and does not list /proc at all.
//! Everything is listed and reread once [`FULL_SCAN_EVERY`] has passed since the last full scan, and
//! at every scan when the notifications are missing or some were lost: what none announces (a
//! process moved to another cgroup, a command line rewritten in place) is seen that late at most.
//!
//! Hand-written: three small reads per pid; the `procfs` crate would bring much more than that.
use std::{
    collections::{BTreeMap, HashSet, btree_map::Entry},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    TargetsError,
    cgroup::{self, ContainerIdentity},
    process_watch::ProcessWatch,
};

/// How often every process is reread (by time, not by count: execs make scans more frequent).
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(30);

/// What [`ProcessScanner::rescan`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rescan {
    /// No process appeared, changed or went.
    Unchanged,
    /// Only these pids appeared, changed or went; `processes` are those of them that exist,
    /// sorted by pid.
    Changed {
        pids: HashSet<u32>,
        processes: Vec<ProcessInfo>,
    },
    /// Every process, sorted by pid (a full scan changed something).
    Full(Vec<ProcessInfo>),
}

/// One host process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Executable path inside the process's root (readlink of `/proc/<pid>/exe`, ` (deleted)` removed).
    pub exe: PathBuf,
    /// The path the process was started as, when it names another file than `exe` (a symlink
    /// or hard link to it: Debian's `redis-server` → `redis-check-rdb`, a multi-call binary's
    /// names): its first argument when absolute, else that name where execvp found it in the
    /// process's PATH, when that is the executable itself.
    pub started_as: Option<PathBuf>,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// The Kubernetes container the process runs in, if any.
    pub container: Option<ContainerIdentity>,
}

/// Reads every process under `proc_root` (normally `/proc`). Kernel threads (no executable) and
/// processes that exit while being read are skipped: such races are normal.
pub fn scan_processes(proc_root: &Path) -> Result<Vec<ProcessInfo>, TargetsError> {
    ProcessScanner::new(proc_root, None).scan()
}

/// Rescans /proc, rereading only the processes that can have changed since its last scan.
pub struct ProcessScanner {
    proc_root: PathBuf,
    watch: Option<ProcessWatch>,
    /// What the last scan saw, by pid (kernel threads and processes that could not be read left
    /// out).
    seen: BTreeMap<u32, ProcessInfo>,
    /// Pids whose process appeared, changed or went since the last rescan handed out what changed.
    changed: HashSet<u32>,
    /// A full scan changed `seen` since then: everything is handed out.
    changed_all: bool,
    /// When the next scan is a full one (None: the next scan is).
    next_full: Option<Instant>,
    last: ScanStats,
}

/// What the last scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// /proc was listed and every process reread.
    pub full: bool,
    /// Processes read from /proc.
    pub read: usize,
    /// Processes taken unchanged from the scan before.
    pub kept: usize,
}

impl ProcessScanner {
    /// Without `watch`, every scan is a full one.
    pub fn new(proc_root: &Path, watch: Option<ProcessWatch>) -> ProcessScanner {
        ProcessScanner {
            proc_root: proc_root.to_path_buf(),
            watch,
            seen: BTreeMap::new(),
            changed: HashSet::new(),
            changed_all: true,
            next_full: None,
            last: ScanStats::default(),
        }
    }

    /// The host's processes, sorted by pid. What changed stays to be handed out by the next
    /// [`ProcessScanner::rescan`] (a caller that resolves some probes with this snapshot leaves the
    /// others to the rescan).
    pub fn scan(&mut self) -> Result<Vec<ProcessInfo>, TargetsError> {
        self.update()?;
        Ok(self.snapshot())
    }

    /// What changed since the last rescan: after a burst of short-lived processes that are all
    /// gone again, nothing, and its callers skip matching processes against their selectors;
    /// otherwise only the processes named, unless a full scan reread everything.
    pub fn rescan(&mut self) -> Result<Rescan, TargetsError> {
        self.update()?;
        if self.changed_all {
            self.changed.clear();
            self.changed_all = false;
            return Ok(Rescan::Full(self.snapshot()));
        }
        if self.changed.is_empty() {
            return Ok(Rescan::Unchanged);
        }
        let pids = std::mem::take(&mut self.changed);
        let mut processes: Vec<ProcessInfo> = pids
            .iter()
            .filter_map(|pid| self.seen.get(pid).cloned())
            .collect();
        processes.sort_by_key(|p| p.pid);
        Ok(Rescan::Changed { pids, processes })
    }

    fn snapshot(&self) -> Vec<ProcessInfo> {
        self.seen.values().cloned().collect()
    }

    fn update(&mut self) -> Result<(), TargetsError> {
        // Drained before anything is read: a change after this point is seen next time at worst.
        let changes = match self.watch.as_mut().and_then(ProcessWatch::drain) {
            Some(changes) if self.next_full.is_some_and(|at| Instant::now() < at) => Some(changes),
            _ => None,
        };
        match changes {
            Some(changes) => self.reread(&changes.pids()),
            None => match self.list() {
                Ok(seen) => {
                    self.changed_all |= seen != self.seen;
                    self.seen = seen;
                }
                Err(error) => {
                    // The changes drained are gone with this scan: the next one rereads everything.
                    self.seen.clear();
                    self.changed_all = true;
                    self.next_full = None;
                    return Err(error);
                }
            },
        }
        if self.last.full {
            self.next_full = Some(Instant::now() + FULL_SCAN_EVERY);
        }
        Ok(())
    }

    /// Rereads `pids`, forgetting those that are gone or no longer readable (a zombie, a leader
    /// gone before its threads); keeps every other process.
    fn reread(&mut self, pids: &HashSet<u32>) {
        let mut found = 0;
        for &pid in pids {
            let known = self.seen.get(&pid);
            match read_process(&self.proc_root.join(pid.to_string()), pid, known) {
                Some(process) => {
                    found += 1;
                    let changed = match self.seen.entry(pid) {
                        Entry::Occupied(mut known) if *known.get() != process => {
                            known.insert(process);
                            true
                        }
                        Entry::Occupied(_) => false,
                        Entry::Vacant(new) => {
                            new.insert(process);
                            true
                        }
                    };
                    if changed {
                        self.changed.insert(pid);
                    }
                }
                None => {
                    if self.seen.remove(&pid).is_some() {
                        self.changed.insert(pid);
                    }
                }
            }
        }
        self.last = ScanStats {
            full: false,
            read: pids.len(),
            kept: self.seen.len() - found,
        };
    }

    /// Lists /proc and reads every process.
    fn list(&mut self) -> Result<BTreeMap<u32, ProcessInfo>, TargetsError> {
        let proc_error = |source| TargetsError::Proc {
            path: self.proc_root.clone(),
            source,
        };
        let entries = fs::read_dir(&self.proc_root).map_err(proc_error)?;
        let mut seen = BTreeMap::new();
        let mut read = 0;
        for entry in entries {
            let entry = entry.map_err(proc_error)?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            read += 1;
            if let Some(process) = read_process(&entry.path(), pid, self.seen.get(&pid)) {
                seen.insert(pid, process);
            }
        }
        self.last = ScanStats {
            full: true,
            read,
            kept: 0,
        };
        Ok(seen)
    }

    /// What the last scan did.
    pub fn last_scan(&self) -> ScanStats {
        self.last
    }
}

/// None when the process is a kernel thread, has exited, or cannot be read (e.g. a zombie).
/// `known`: what the scan before read of this pid; the name it was started as is looked up again
/// only when its executable or command line changed (that lookup reads its environment and stats
/// files in its root: tens of microseconds, for every such process at every full scan otherwise).
fn read_process(dir: &Path, pid: u32, known: Option<&ProcessInfo>) -> Option<ProcessInfo> {
    let exe = executable(dir)?;
    let raw_cmdline = fs::read(dir.join("cmdline")).ok()?;
    let cmdline = join_cmdline(&raw_cmdline);
    let started_as = match known {
        Some(k) if k.exe == exe && k.cmdline == cmdline => k.started_as.clone(),
        _ => started_as(dir, &exe, &raw_cmdline),
    };
    let container = match fs::read_to_string(dir.join("cgroup")) {
        Ok(contents) => cgroup::identity_from_file(&contents),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => None,
    };
    Some(ProcessInfo {
        pid,
        exe,
        started_as,
        cmdline,
        container,
    })
}

/// See [`ProcessInfo::started_as`]. A name looked up through PATH is taken only when the file found
/// there is the one running (same device and inode), so a PATH changed since, or another file of
/// that name, selects nothing by mistake.
fn started_as(dir: &Path, exe: &Path, raw_cmdline: &[u8]) -> Option<PathBuf> {
    // argv[0], up to a blank: programs that set their own title (redis-server, nginx, postgres)
    // write it over argv[0], the name they were started as in front (`redis-server
    // 127.0.0.1:6379`, `nginx: worker`).
    let first = raw_cmdline.split(|b| *b == 0 || *b == b' ').next()?;
    let first = std::str::from_utf8(first).ok()?.trim_end_matches(':');
    if first.starts_with('/') {
        return (Path::new(first) != exe).then(|| PathBuf::from(first));
    }
    // Relative paths need the cwd at exec time, long gone; the executable's own name adds
    // nothing.
    if first.is_empty() || first.contains('/') || exe.file_name().is_some_and(|n| n == first) {
        return None;
    }
    // A title written over argv[0] may have overwritten the environment too (redis-server's
    // does): then the directories execvp searches by default on Debian and most images.
    let environ = fs::read(dir.join("environ")).unwrap_or_default();
    let path = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let running = fs::metadata(dir.join("exe")).ok()?;
    let root = dir.join("root");
    path.split(|b| *b == b':')
        .filter_map(|d| std::str::from_utf8(d).ok())
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(first))
        .find_map(|candidate| {
            let inside = candidate.strip_prefix("/").ok()?;
            fs::metadata(root.join(inside)).ok().map(|m| (candidate, m))
        })
        .filter(|(_, found)| found.dev() == running.dev() && found.ino() == running.ino())
        .map(|(candidate, _)| candidate)
}

/// The executable of the process whose /proc directory is `dir`, as selectors name it; None once
/// it exited.
pub fn executable(dir: &Path) -> Option<PathBuf> {
    fs::read_link(dir.join("exe")).ok().map(strip_deleted)
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
    fn the_path_a_program_was_started_as_survives_a_title_written_over_its_arguments() {
        let exe = Path::new("/usr/bin/redis-check-rdb");
        let nowhere = Path::new("/nonexistent");
        for raw in [
            &b"/usr/bin/redis-server 127.0.0.1:6379\0\0\0"[..],
            b"/usr/bin/redis-server\0--port\0",
        ] {
            assert_eq!(
                started_as(nowhere, exe, raw),
                Some(PathBuf::from("/usr/bin/redis-server"))
            );
        }
        assert_eq!(
            started_as(nowhere, exe, b"/usr/bin/redis-check-rdb\0"),
            None
        );
        let nginx = Path::new("/usr/sbin/nginx");
        assert_eq!(started_as(nowhere, nginx, b"nginx: worker process\0"), None);
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
