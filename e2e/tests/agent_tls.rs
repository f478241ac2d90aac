//! The agent's HTTPS listener in a cluster: an agent started with `--tls-cert-file`/`--tls-key-file`
//! (a certificate from the control plane's CA, as cert-manager's CA issuer would give it) serves its
//! API and `/metrics` over HTTPS only, and a real Prometheus scrapes it with `tls_config: {ca_file}`
//! and the metrics reader's token.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm, prometheus, openssl).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sonde_e2e::prometheus::{Prometheus, Scrape};
use sonde_e2e::single_node::{SingleNode, lock};
use sonde_e2e::sonde::AgentOptions;
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-tls";

struct Env {
    // Dropped before the node (and its control plane).
    prometheus: Mutex<Option<Prometheus>>,
    /// The CA that issued the agent's certificate.
    ca: PathBuf,
    node: SingleNode,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        let mut out = self.node.diagnostics();
        if let Some(prom) = lock(&self.prometheus).as_ref() {
            out += &suite::log_section("prometheus", prom.proc.log_path(), 30);
        }
        out
    }
}

fn setup() -> Result<Env> {
    let node = SingleNode::start("sonde-e2e-agent-tls-", NODE)?;
    let pki = &node.cluster.control_plane.pki;
    let (cert, key) = pki.serving_cert("sonde-agent")?;
    let ca = pki.ca_cert.clone();
    node.start_sonde_with_agent(
        &[],
        &AgentOptions {
            args: vec![
                format!("--tls-cert-file={}", cert.display()),
                format!("--tls-key-file={}", key.display()),
            ],
            tls_ca: Some(ca.clone()),
            ..AgentOptions::default()
        },
    )?;
    Ok(Env {
        prometheus: Mutex::new(None),
        ca,
        node,
    })
}

/// GET `path` on the agent with its client (which trusts the CA); (status, body).
async fn get(env: &Env, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let (client, url) = {
        let agent = lock(&env.node.agent);
        let agent = agent.as_ref().context("no agent")?;
        (agent.client()?, format!("{}{path}", agent.url))
    };
    let mut req = client.get(&url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let code = resp.status().as_u16();
    Ok((code, resp.text().await.unwrap_or_default()))
}

fn the_agent_serves_its_api_over_https_only(env: &Env) -> Result<()> {
    let url = env.node.agent_url()?;
    ensure!(url.starts_with("https://"), "{url}");
    let reader = env.node.reader_token()?;
    env.node.rt.block_on(async {
        let (code, body) = get(env, "/healthz", None).await?;
        ensure!(code == 200, "GET /healthz over https: {code} {body}");
        // Ready once capability detection is done.
        wait::until_ok("/readyz 200 over https", CONVERGE, || async {
            let (code, body) = get(env, "/readyz", None).await?;
            ensure!(code == 200, "GET /readyz over https: {code} {body}");
            Ok(())
        })
        .await?;
        let (code, body) = get(env, "/v1/tables", None).await?;
        ensure!(code == 401, "GET /v1/tables without a token: {code} {body}");
        let (code, body) = get(env, "/v1/tables", Some(&reader)).await?;
        ensure!(code == 200, "GET /v1/tables as a reader: {code} {body}");
        // The same port in clear text: no HTTP answer, so no token is ever sent in the clear to it.
        let plain = url.replacen("https://", "http://", 1) + "/healthz";
        let answer = reqwest::Client::new().get(&plain).send().await;
        ensure!(
            answer.is_err(),
            "plain HTTP was answered: {:?}",
            answer.map(|r| r.status())
        );
        // ... and counted (the handshake ends when the plain request is refused).
        let metrics = env.node.metrics_token()?;
        wait::until_ok("the failed handshake counted", CONVERGE, || async {
            let (code, text) = get(env, "/metrics", Some(&metrics)).await?;
            ensure!(code == 200, "GET /metrics: {code} {text}");
            let failures = text
                .lines()
                .find_map(|l| l.strip_prefix("sonde_http_tls_handshake_failures_total "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            ensure!(
                failures.is_some_and(|n| n >= 1.0),
                "sonde_http_tls_handshake_failures_total after a plain-HTTP request: {failures:?}"
            );
            Ok(())
        })
        .await?;
        Ok(())
    })
}

fn a_real_prometheus_scrapes_the_agent_over_https_with_its_token(env: &Env) -> Result<()> {
    let port = lock(&env.node.agent)
        .as_ref()
        .map(|a| a.port)
        .context("no agent")?;
    let token = env.node.metrics_token()?;
    let prom = env.node.rt.block_on(Prometheus::start_with(
        env.node.dir.path(),
        &[format!("127.0.0.1:{port}")],
        &Scrape {
            token: Some(&token),
            ca_file: Some(env.ca.clone()),
        },
    ))?;
    let result = env.node.rt.block_on(prom.sonde_series(
        "a sonde_ series scraped over https",
        Duration::from_secs(60),
    ));
    *lock(&env.prometheus) = Some(prom);
    result?;
    Ok(())
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "the_agent_serves_its_api_over_https_only",
                the_agent_serves_its_api_over_https_only,
            ),
            Scenario::new(
                "a_real_prometheus_scrapes_the_agent_over_https_with_its_token",
                a_real_prometheus_scrapes_the_agent_over_https_with_its_token,
            ),
        ],
    )
}
