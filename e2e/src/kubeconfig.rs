//! Kubeconfig files for the admin (client certificate) and for ServiceAccount identities (tokens).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

/// How a kubeconfig's user authenticates.
pub enum Credentials<'a> {
    ClientCert { cert: &'a Path, key: &'a Path },
    Token(&'a str),
}

/// Writes a kubeconfig for `server` (trusting `ca`) to `path`.
pub fn write(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    creds: Credentials<'_>,
) -> Result<PathBuf> {
    let user_entry = match creds {
        Credentials::ClientCert { cert, key } => json!({
            "client-certificate": cert, "client-key": key,
        }),
        Credentials::Token(token) => json!({ "token": token }),
    };
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "e2e", "cluster": { "server": server, "certificate-authority": ca } }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{ "name": user, "context": { "cluster": "e2e", "user": user } }],
        "current-context": user,
    });
    let text = serde_yaml_ng::to_string(&doc).context("serializing a kubeconfig")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// A kube client for a kubeconfig file.
pub async fn client(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("building a kube client")
}
