//! A real Prometheus (Debian's `prometheus`) scraping targets every second, and queries to its HTTP API.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::ports::free_port;
use crate::process::Proc;
use crate::{tools, wait};

/// How Prometheus reaches its targets.
#[derive(Clone, Debug, Default)]
pub struct Scrape<'a> {
    /// Sent as the bearer token (`authorization: {credentials_file}`), as a Prometheus in a
    /// cluster sends its ServiceAccount's token.
    pub token: Option<&'a str>,
    /// Scrape over https, checking the targets' certificates against this CA
    /// (`tls_config: {ca_file}`).
    pub ca_file: Option<PathBuf>,
}

pub struct Prometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub proc: Proc,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port, path /metrics) every second, sending
    /// `token` as its bearer token when given (`authorization: {credentials_file}`, as a Prometheus
    /// in a cluster sends its ServiceAccount's token).
    pub async fn start(dir: &Path, targets: &[String], token: Option<&str>) -> Result<Prometheus> {
        Prometheus::start_with(
            dir,
            targets,
            &Scrape {
                token,
                ca_file: None,
            },
        )
        .await
    }

    /// Like [`Prometheus::start`], scraping as `scrape` says.
    pub async fn start_with(
        dir: &Path,
        targets: &[String],
        scrape: &Scrape<'_>,
    ) -> Result<Prometheus> {
        let token = scrape.token;
        std::fs::create_dir_all(dir.join("prometheus-data"))?;
        let config = dir.join("prometheus.yml");
        let targets_yaml = serde_json::to_string(targets)?;
        let authorization = match token {
            Some(token) => {
                let file = dir.join("prometheus-token");
                std::fs::write(&file, token)
                    .with_context(|| format!("writing {}", file.display()))?;
                let file = serde_json::to_string(&file.to_string_lossy())?;
                format!("    authorization: {{credentials_file: {file}}}\n")
            }
            None => String::new(),
        };
        let tls = match &scrape.ca_file {
            Some(ca) => format!(
                "    scheme: https\n    tls_config: {{ca_file: {}}}\n",
                serde_json::to_string(&ca.to_string_lossy())?
            ),
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: sonde-agent\n{authorization}{tls}    static_configs:\n      - targets: {targets_yaml}\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let port = free_port()?;
        let mut cmd = Command::new(tools::prometheus()?);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut prom = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            proc: Proc::spawn("prometheus", cmd, &dir.join("logs"))?,
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/-/ready", prom.url);
        let proc = &mut prom.proc;
        wait::until("prometheus /-/ready", Duration::from_secs(30), || {
            let running = proc.is_running();
            let req = http.get(&ready).send();
            async move {
                if !running {
                    bail!("prometheus exited");
                }
                Ok(req.await.ok().filter(|r| r.status().is_success()).map(drop))
            }
        })
        .await?;
        Ok(prom)
    }

    /// Runs an instant query; returns `data.result`.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let resp: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        if resp["status"] != "success" {
            bail!("prometheus query {promql:?} failed: {resp}");
        }
        Ok(resp["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits up to `timeout` for a `sonde_` series scraped from the job `sonde-agent`; `what`
    /// names the wait in its error.
    pub async fn sonde_series(
        &self,
        what: &str,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let series = wait::until(what, timeout, || async {
            let r = self
                .query(r#"{__name__=~"sonde_.+", job="sonde-agent"}"#)
                .await?;
            Ok((!r.is_empty()).then_some(r))
        })
        .await?;
        if !series.iter().any(|s| {
            s["metric"]["__name__"]
                .as_str()
                .is_some_and(|n| n.starts_with("sonde_"))
        }) {
            bail!("unexpected query result {series:?}");
        }
        Ok(series)
    }
}
