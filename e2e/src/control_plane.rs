//! A real etcd and kube-apiserver as local processes (what envtest does): free loopback ports, a fresh
//! data directory and PKI, RBAC authorization, service-account tokens signed by a key made at start.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::kubeconfig::{self, Credentials};
use crate::kubectl::Kubectl;
use crate::pki::Pki;
use crate::ports::free_port;
use crate::process::Proc;
use crate::{tools, wait};

/// Issuer and audience of the service-account tokens.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running etcd + kube-apiserver; both are stopped when this is dropped.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    pub pki: Pki,
    /// Kubeconfig of the `system:masters` admin.
    pub admin_kubeconfig: PathBuf,
    // Field order = drop order: the API server goes before etcd.
    pub apiserver: Proc,
    pub etcd: Proc,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver under `dir` and waits until the API server is ready.
    pub async fn start(dir: &Path) -> Result<ControlPlane> {
        let pki = Pki::create(&dir.join("pki"))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

        let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut cmd = Command::new(tools::etcd()?);
        cmd.arg("--name=e2e")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            .arg("--log-level=warn");
        let mut etcd = Proc::spawn("etcd", cmd, &logs)?;
        let http = reqwest::Client::new();
        wait::until("etcd /health", Duration::from_secs(30), || {
            let http = http.clone();
            let url = format!("{etcd_url}/health");
            let running = etcd.is_running();
            async move {
                if !running {
                    bail!("etcd exited");
                }
                let body = http.get(url).send().await?.text().await?;
                Ok(body.contains("true").then_some(()))
            }
        })
        .await
        .with_context(|| format!("etcd did not start; log:\n{}", etcd.log_tail(30)))?;

        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(tools::kube_apiserver()?);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.server_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.server_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--service-account-issuer={SA_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--api-audiences={SA_ISSUER}"))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            // No controller-manager creates `default` ServiceAccounts, and pods here run no containers.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--endpoint-reconciler-type=none")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("--v=1");
        let mut apiserver = Proc::spawn("kube-apiserver", cmd, &logs)?;

        let admin_kubeconfig = kubeconfig::write(
            &dir.join("admin.kubeconfig"),
            &server,
            &pki.ca_cert,
            "admin",
            Credentials::ClientCert {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
        )?;
        let kubectl = Kubectl::new(&admin_kubeconfig)?;
        wait::until("kube-apiserver /readyz", Duration::from_secs(90), || {
            let out = kubectl.run(&["get", "--raw", "/readyz"], None);
            let running = apiserver.is_running();
            async move {
                if !running {
                    bail!("kube-apiserver exited");
                }
                Ok(out?.trim().eq("ok").then_some(()))
            }
        })
        .await
        .with_context(|| {
            format!(
                "kube-apiserver did not become ready; log:\n{}\netcd log:\n{}",
                apiserver.log_tail(40),
                etcd.log_tail(10)
            )
        })?;
        // The `default` namespace is made by a post-start controller that may lag /readyz a little.
        wait::until("namespace default", Duration::from_secs(30), || {
            let out = kubectl.run(&["get", "namespace", "default", "-o", "name"], None);
            async move { Ok(out.is_ok().then_some(())) }
        })
        .await?;
        Ok(ControlPlane {
            server,
            pki,
            admin_kubeconfig,
            apiserver,
            etcd,
        })
    }

    /// Kubeconfig for a bearer token (a ServiceAccount identity).
    pub fn token_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<PathBuf> {
        kubeconfig::write(
            path,
            &self.server,
            &self.pki.ca_cert,
            user,
            Credentials::Token(token),
        )
    }
}
