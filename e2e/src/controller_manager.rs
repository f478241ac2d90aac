//! A real kube-controller-manager running only the controllers a scenario names: the bare control
//! plane has none, and some behaviour exists only through one (a namespace is deleted by the
//! namespace controller, which empties it — finalizers included — before removing it).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::control_plane::ControlPlane;
use crate::process::Proc;
use crate::{tools, wait};

/// A running kube-controller-manager; stopped when dropped.
pub struct ControllerManager {
    pub proc: Proc,
}

impl ControllerManager {
    /// Starts kube-controller-manager with `controllers` only (e.g. `["namespace"]`), as the admin
    /// (the test's identities stay the ones under test), logging under `log_dir`; returns once its
    /// controllers started.
    pub async fn start(
        control_plane: &ControlPlane,
        controllers: &[&str],
        log_dir: &Path,
    ) -> Result<ControllerManager> {
        let kubeconfig = control_plane.admin_kubeconfig.display().to_string();
        let mut cmd = Command::new(tools::kube_controller_manager()?);
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--controllers={}", controllers.join(",")))
            // One instance, no Lease to wait for; no HTTPS endpoint (nothing scrapes it).
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=2");
        let mut proc = Proc::spawn("kube-controller-manager", cmd, log_dir)?;
        let log = proc.log_path().to_owned();
        wait::until(
            "kube-controller-manager to start its controllers",
            Duration::from_secs(60),
            || {
                let running = proc.is_running();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                async move {
                    if !running {
                        bail!("kube-controller-manager exited");
                    }
                    Ok(text.contains("Started controller").then_some(()))
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; log:\n{}", proc.log_tail(30)))?;
        Ok(ControllerManager { proc })
    }
}
