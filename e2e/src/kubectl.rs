//! `kubectl` runs, as users drive Sonde.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::tools;

/// kubectl bound to one kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path) -> Result<Kubectl> {
        Ok(Kubectl {
            binary: tools::kubectl()?,
            kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    /// Runs kubectl with `args`, feeding `stdin`; returns the raw output, success or not.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .context("writing kubectl's stdin")?;
        }
        child.wait_with_output().context("waiting for kubectl")
    }

    /// Runs kubectl and returns stdout; fails with stderr when kubectl fails.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.output(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.run(&["apply", "-f", "-"], Some(yaml))
    }
}
