//! The Helm chart as users install it: `helm lint` / `helm template` of `charts/sonde`, and the
//! access-control part of its output (RBAC, admission policies) so the e2e identities run under the
//! chart's real rules.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::process::run;
use crate::tools;

/// Release name and namespace the e2e tests install the chart under.
pub const RELEASE: &str = "sonde";
pub const NAMESPACE: &str = "sonde-system";

/// Kinds kept by [`rbac_manifests`].
pub const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

pub fn chart_dir() -> PathBuf {
    tools::workspace_root().join("charts/sonde")
}

/// `helm lint charts/sonde` output; fails with helm's message.
pub fn lint() -> Result<String> {
    let out = run(Command::new(tools::helm()?).arg("lint").arg(chart_dir()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template sonde charts/sonde --namespace sonde-system [extra args]`.
pub fn template(extra: &[&str]) -> Result<String> {
    let out = run(Command::new(tools::helm()?)
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE])
        .args(extra))
    .context("helm template charts/sonde failed")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The YAML documents of a multi-document string, as JSON values (empty documents dropped).
pub fn documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).context("helm output is not valid YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Only the access-control objects (ServiceAccounts, roles, bindings, admission policies) of the
/// chart, as one YAML stream.
pub fn rbac_manifests() -> Result<String> {
    let docs = documents(&template(&[])?)?;
    let mut out = String::new();
    for doc in docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
    {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(doc).context("re-serializing a chart object")?);
    }
    Ok(out)
}

/// Runs `helm <args>` against the cluster of `kubeconfig` (install, upgrade, rollback, uninstall as a
/// user runs them); returns stdout, or fails with helm's stderr.
pub fn run_against(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = run(Command::new(tools::helm()?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args))
    .with_context(|| format!("helm {} failed", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
