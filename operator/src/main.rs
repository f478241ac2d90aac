//! `sonde-operator`: turns Tracepoint, DynamicLog and BpftraceScript resources into one
//! NodeAssignment per node, and the agents' reports back into the resources' status.
#![forbid(unsafe_code)]

mod assignment;
mod auto_telemetry;
mod cli;
mod context;
mod controllers;
mod error;
#[cfg(test)]
mod fixtures;
mod http;
mod leader;
mod metrics;
mod query;
mod reconcile;
mod resources;
mod status;
mod stores;
mod ttl;
mod uninstall;
mod validate;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio::task::JoinSet;

use crate::cli::{Args, Command};
use crate::metrics::Metrics;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // stdout stays free for the `--once` summary.
        .with_writer(std::io::stderr)
        .init();
    if let Some(Command::Uninstall(u)) = &args.command {
        let client = kube::Client::try_default().await.context(
            "cannot reach the Kubernetes API: set KUBECONFIG or run in a pod with a service account",
        )?;
        let summary = uninstall::run(client, &u.options()).await?;
        println!("{summary}");
        return Ok(());
    }
    let metrics = Arc::new(Metrics::new());
    let http = tokio::spawn(http::serve(args.metrics_listen, metrics.clone()));
    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG or run in a pod with a service account",
    )?;
    // Table queries are served by every replica, leading or not.
    let query = match args.query_listen {
        Some(addr) => {
            let agents = args.agents()?;
            tokio::spawn(query::serve(addr, client.clone(), agents, metrics.clone()))
        }
        None => tokio::spawn(std::future::pending()),
    };
    let identity = args.identity();
    let auto_telemetry = args.auto_telemetry();
    for feature in auto_telemetry.features() {
        tracing::info!(
            id = %feature.id(),
            excluded_namespaces = ?auto_telemetry.excluded_namespaces,
            "auto-telemetry on: every pod outside the excluded namespaces is a target"
        );
    }

    if args.once {
        return once(client, metrics, &identity, auto_telemetry).await;
    }

    let mut leadership = leader::Leadership::start(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
    )
    .await?;
    tracing::info!(%identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");
    tokio::select! {
        acquired = leadership.acquired() => acquired?,
        _ = shutdown_signal() => {
            leadership.release().await;
            return Ok(());
        }
    }
    metrics.set_leader(true);
    tracing::info!(%identity, "leading: starting controllers");

    let mut tasks = JoinSet::new();
    let work = async {
        let (ctx, subs) = controllers::start(
            client,
            metrics.clone(),
            &identity,
            auto_telemetry,
            &mut tasks,
        )
        .await?;
        Err::<(), _>(controllers::run(ctx, subs, tasks).await)
    };
    tokio::select! {
        result = work => {
            metrics.set_leader(false);
            leadership.release().await;
            result?;
        }
        _ = leadership.lost() => {
            metrics.set_leader(false);
            // Controllers of a replica that lost the lease must stop at once; a restart is the
            // simplest complete stop, and the Deployment does it.
            anyhow::bail!("lost the leader lease; exiting so that this replica restarts as a follower");
        }
        _ = shutdown_signal() => {
            metrics.set_leader(false);
            leadership.release().await;
        }
        served = http => {
            let served = served.context("HTTP server task failed")?;
            served?;
        }
        served = query => {
            let served = served.context("table-query server task failed")?;
            served?;
        }
    }
    Ok(())
}

/// `--once`: one assignment pass over the current state, then exit (for benchmarks; no leader election).
async fn once(
    client: kube::Client,
    metrics: Arc<Metrics>,
    identity: &str,
    auto_telemetry: crate::auto_telemetry::AutoTelemetry,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let (ctx, _subs) =
        controllers::start(client, metrics, identity, auto_telemetry, &mut tasks).await?;
    let report = assignment::sync::pass(&ctx).await;
    assignment::sync::SkippedLog::default().update(&report.skipped);
    println!(
        "assignment pass: {} nodes, {} probes, {} applied, {} deleted, {} errors, {} ms",
        report.nodes,
        report.probes,
        report.applied,
        report.deleted,
        report.errors,
        report.took.as_millis()
    );
    tasks.abort_all();
    anyhow::ensure!(
        report.errors == 0,
        "{} NodeAssignment writes failed (see the log)",
        report.errors
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
