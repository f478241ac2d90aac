//! libtest-mimic glue: one shared environment (control plane, operator, agent…) per test binary, set up
//! lazily by the first scenario that runs, scenarios run one at a time in the order given, failures
//! carry the tail of every process log, and the environment is torn down (by PID) before exit.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use libtest_mimic::{Arguments, Failed, Trial};

/// An e2e environment shared by the scenarios of one test binary.
pub trait Environment: Send + Sync + 'static {
    /// Text appended to a failure: process logs and anything else that helps.
    fn diagnostics(&self) -> String;
}

/// The body of a scenario.
pub type ScenarioFn<E> = Box<dyn Fn(&E) -> Result<()> + Send + Sync>;

/// A named scenario.
pub struct Scenario<E> {
    pub name: String,
    pub run: ScenarioFn<E>,
}

impl<E> Scenario<E> {
    pub fn new(
        name: impl Into<String>,
        run: impl Fn(&E) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        Scenario {
            name: name.into(),
            run: Box::new(run),
        }
    }
}

enum State<E> {
    NotStarted,
    Ready(Arc<E>),
    SetupFailed(String),
}

/// Runs the scenarios as a test binary; prints what `cargo test` prints.
pub fn main<E: Environment>(setup: fn() -> Result<E>, scenarios: Vec<Scenario<E>>) -> ExitCode {
    let mut args = Arguments::from_args();
    // Scenarios restart and kill shared processes: they must not overlap.
    args.test_threads.get_or_insert(1);
    let state: Arc<Mutex<State<E>>> = Arc::new(Mutex::new(State::NotStarted));
    let trials = scenarios
        .into_iter()
        .map(|s| {
            let state = Arc::clone(&state);
            Trial::test(s.name, move || {
                let env = {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    if let State::NotStarted = *st {
                        *st = match catch_unwind(setup) {
                            Ok(Ok(env)) => State::Ready(Arc::new(env)),
                            Ok(Err(e)) => State::SetupFailed(format!("{e:#}")),
                            Err(_) => State::SetupFailed("setup panicked".into()),
                        };
                    }
                    match &*st {
                        State::Ready(env) => Arc::clone(env),
                        State::SetupFailed(e) => {
                            return Err(Failed::from(format!(
                                "setting up the e2e environment failed: {e}"
                            )));
                        }
                        State::NotStarted => return Err("setup did not run".into()),
                    }
                };
                match catch_unwind(AssertUnwindSafe(|| (s.run)(&env))) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{e:#}\n{}", env.diagnostics()).into()),
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into());
                        Err(format!("panicked: {msg}\n{}", env.diagnostics()).into())
                    }
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Tear down before exiting: every process is stopped by its Drop.
    drop(std::mem::replace(
        &mut *state.lock().unwrap_or_else(|e| e.into_inner()),
        State::NotStarted,
    ));
    conclusion.exit_code()
}

/// Tail of a log file under a heading, for diagnostics.
pub fn log_section(title: &str, path: &std::path::Path, lines: usize) -> String {
    format!(
        "\n----- {title} ({}) -----\n{}\n",
        path.display(),
        crate::process::log_tail(path, lines)
    )
}

/// A fresh working directory (PKI, etcd data, logs, kubeconfigs) under the system temp dir, removed
/// at the end unless `SONDE_E2E_KEEP=1` (then its path is printed, for reading the logs afterwards).
pub fn work_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let keep = std::env::var_os("SONDE_E2E_KEEP").is_some_and(|v| v == "1");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()?;
    if keep {
        eprintln!("e2e: keeping {}", dir.path().display());
    }
    Ok(dir)
}
