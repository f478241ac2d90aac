//! Starts bpftrace children from one thread that lives as long as the agent.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)` so that none survives the agent, even a SIGKILLed
//! one. The kernel sends that signal when the *thread* that forked the child exits, not the
//! process; spawning from tokio's `spawn_blocking` pool (threads that exit when idle) would kill
//! healthy children. Hence this dedicated, never-exiting spawner thread.
use std::io;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use nix::unistd::getppid;
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Request {
    command: Command,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();

fn spawner() -> io::Result<Sender<Request>> {
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone());
    }
    let (sender, receiver) = channel::<Request>();
    std::thread::Builder::new()
        .name("sonde-bpftrace-spawner".into())
        .spawn(move || {
            for mut request in receiver {
                // Registers the child's pipes and exit notification with the caller's runtime.
                let _runtime = request.runtime.enter();
                let result = request.command.spawn();
                // The caller may have given up waiting; kill_on_drop then ends the child.
                let _ = request.reply.send(result);
            }
        })?;
    let stored = SPAWNER.get_or_init(|| Mutex::new(sender));
    Ok(stored
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone())
}

/// Spawns `command` (with `kill_on_drop` and a parent-death SIGKILL) from the spawner thread.
pub async fn spawn(mut command: Command) -> io::Result<Child> {
    let agent_pid = std::process::id();
    command.kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec in the child and only makes two
    // async-signal-safe syscalls (prctl, getppid); it allocates only on the error path, which
    // ends the child anyway.
    unsafe {
        command.pre_exec(move || {
            set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The agent may have died between fork and prctl: then nobody would kill us later.
            if u32::try_from(getppid().as_raw()).ok() != Some(agent_pid) {
                return Err(io::Error::other(
                    "the agent exited while bpftrace was starting",
                ));
            }
            Ok(())
        });
    }
    let (reply, response) = oneshot::channel();
    let request = Request {
        command,
        runtime: Handle::current(),
        reply,
    };
    spawner()?
        .send(request)
        .map_err(|_| io::Error::other("the bpftrace spawner thread is gone"))?;
    response
        .await
        .map_err(|_| io::Error::other("the bpftrace spawner thread dropped the request"))?
}
