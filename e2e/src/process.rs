//! Child processes owned by a test: logs captured to a file, stopped by PID on drop (SIGTERM, then
//! SIGKILL to the whole process group after a grace period), and killed by the kernel if the test
//! binary dies (`PR_SET_PDEATHSIG`).
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and libtest-mimic runs tests
//! on short-lived threads, so every child is forked by one spawner thread that lives as long as the
//! test binary.
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static, so this thread (the children's "parent") never exits
                // before the process does.
            })
            .map(drop)
            .unwrap_or_else(|e| eprintln!("e2e: cannot start the spawner thread: {e}"));
        Mutex::new(tx)
    })
}

/// Spawns `cmd` in its own process group, with `PR_SET_PDEATHSIG=SIGKILL`, from the spawner thread.
fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the e2e spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the e2e spawner thread dropped the request"))?
}

/// A running child process owned by the test.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = cmd.get_program().to_owned();
        let child = spawn_owned(cmd)
            .with_context(|| format!("starting {name} ({program:?}); is it installed?"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// How it exited, if it did.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exit
    }

    /// Sends SIGTERM to the process only (not its group, so children it should clean up itself are
    /// left to it), waits up to `grace`, then SIGKILLs the whole process group.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.is_running() {
            return self.exit;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if !self.is_running() {
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        self.exit = self.child.wait().ok();
        self.exit
    }

    /// SIGKILL to the process only: a crash, as far as its children and the API server can tell.
    pub fn crash(&mut self) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.exit = self.child.wait().ok();
        self.exit
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
        // Anything left in its group (e.g. a child that ignored SIGTERM) goes too.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
    }
}

/// The last `lines` lines of a file, or a note why it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs a short command to completion and returns its output; fails with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
    }
    Ok(out)
}

/// Every pid listed under `/proc`.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// What `/proc/<pid>/stat` says about a process; fields that cannot be parsed are empty (or 0).
pub struct Stat {
    /// The executable name (`comm`).
    pub comm: String,
    /// The one-letter state (`R`, `S`, `Z`…).
    pub state: String,
    pub ppid: u32,
}

/// `/proc/<pid>/stat` of `pid`, or `None` if it is gone or unreadable.
pub fn stat(pid: u32) -> Option<Stat> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields start after the last ')'.
    let (head, rest) = raw.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    Some(Stat {
        comm: head
            .split_once('(')
            .map(|(_, c)| c)
            .unwrap_or_default()
            .to_owned(),
        state: fields.next().unwrap_or_default().to_owned(),
        ppid: fields.next().and_then(|p| p.parse().ok()).unwrap_or(0),
    })
}

/// Pids of live processes whose command line contains `needle`, with their parent pid.
pub fn processes_matching(needle: &str) -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    for pid in pids() {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if !cmdline.contains(needle) {
            continue;
        }
        let ppid = stat(pid).map_or(0, |s| s.ppid);
        found.push((pid, ppid, cmdline.trim().to_owned()));
    }
    found
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !s.state.is_empty() && s.state != "Z")
}
