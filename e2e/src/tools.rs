//! Where the external programs come from: the control plane built by `scripts/setup e2e` into
//! `~/.cache/sonde/`, Debian's etcd and prometheus, kubectl, and Sonde's own binaries built from this
//! workspace. Each can be overridden with an environment variable (named in the error message).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Kubernetes version whose kube-apiserver and kube-controller-manager `scripts/setup e2e` builds.
pub const KUBE_VERSION: &str = "v1.33.13";

/// The workspace root (parent of `e2e/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/sonde")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Finds a tool: `$ENV_VAR`, then the candidates, then `$PATH`.
fn find(name: &str, env_var: &str, candidates: &[PathBuf]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} does not name a file", p.display());
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    on_path(name).with_context(|| {
        format!(
            "{name} not found (looked at {candidates:?} and $PATH): run `scripts/setup e2e`, or set {env_var}"
        )
    })
}

pub fn etcd() -> Result<PathBuf> {
    find("etcd", "SONDE_ETCD", &[cache_dir().join("bin/etcd")])
}

pub fn kube_apiserver() -> Result<PathBuf> {
    find(
        "kube-apiserver",
        "SONDE_KUBE_APISERVER",
        &[cache_dir().join(format!("k8s-{KUBE_VERSION}/kube-apiserver"))],
    )
}

/// Built by `scripts/setup e2e` next to kube-apiserver; scenarios that need one of its controllers
/// (the namespace controller) start it.
pub fn kube_controller_manager() -> Result<PathBuf> {
    find(
        "kube-controller-manager",
        "SONDE_KUBE_CONTROLLER_MANAGER",
        &[cache_dir().join(format!("k8s-{KUBE_VERSION}/kube-controller-manager"))],
    )
}

pub fn helm() -> Result<PathBuf> {
    find("helm", "SONDE_HELM", &[cache_dir().join("bin/helm")])
}

pub fn kubectl() -> Result<PathBuf> {
    find("kubectl", "SONDE_KUBECTL", &[])
}

pub fn prometheus() -> Result<PathBuf> {
    find("prometheus", "SONDE_PROMETHEUS", &[])
}

pub fn bpftrace() -> Result<PathBuf> {
    find("bpftrace", "SONDE_BPFTRACE", &[])
}

/// Directory cargo puts binaries of this workspace in (`$CARGO_TARGET_DIR/<profile>` or
/// `target/<profile>`), for the `debug` or `release` profile.
pub fn target_dir(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join(profile)
}

/// Paths of the operator and agent binaries.
#[derive(Clone, Debug)]
pub struct SondeBinaries {
    pub operator: PathBuf,
    pub agent: PathBuf,
}

/// Builds `sonde-operator` and `sonde-agent` with cargo (a no-op when they are fresh) so the tests always
/// run the current code. `SONDE_E2E_PREBUILT=1` skips the build and uses what is in `target/debug`
/// (`target/release` for [`build_sonde_profile`]`(true)`).
pub fn build_sonde() -> Result<SondeBinaries> {
    build_sonde_profile(false)
}

/// [`build_sonde`] with the release profile when `release` (for benchmarks).
pub fn build_sonde_profile(release: bool) -> Result<SondeBinaries> {
    if std::env::var_os("SONDE_E2E_PREBUILT").is_none() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut args = vec![
            "build",
            "--quiet",
            "-p",
            "sonde-operator",
            "-p",
            "sonde-agent",
        ];
        // The profile built must be the one run below, or a benchmark measures stale binaries.
        if release {
            args.push("--release");
        }
        // Output is captured so it does not interleave with the test report; it is shown on failure.
        let out = Command::new(&cargo)
            .current_dir(workspace_root())
            .args(&args)
            .output()
            .with_context(|| format!("running {cargo:?} build"))?;
        if !out.status.success() {
            bail!(
                "`cargo {}` failed ({}); fix the build first:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let dir = target_dir(if release { "release" } else { "debug" });
    let bins = SondeBinaries {
        operator: dir.join("sonde-operator"),
        agent: dir.join("sonde-agent"),
    };
    for p in [&bins.operator, &bins.agent] {
        if !p.is_file() {
            bail!(
                "{} is missing: run `cargo build{} -p sonde-operator -p sonde-agent`",
                p.display(),
                if release { " --release" } else { "" }
            );
        }
    }
    Ok(bins)
}
