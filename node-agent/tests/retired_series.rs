//! Series named after a probe (its runtime's own counters) outlive it by [`RETIRE_AFTER`], so the
//! last scrape sees their final values, then go: a node's series do not grow with every
//! BpftraceScript and DynamicLog it ever ran. Nothing is traced here: the probes wait for targets,
//! and their counters are made as their traffic would have made them. Tokio's clock is paused, so
//! no one waits five minutes. The DynamicLog runtime loads its eBPF object: needs root.
mod common;

use std::time::Duration;

use prometheus_client::registry::Registry;
use sonde_agent::probes::ProbeContext;
use sonde_agent::probes::bpftrace::BpftraceProbe;
use sonde_agent::probes::dynamic_log::DynamicLogProbe;
use sonde_agent::probes::dynamic_log::metrics::ProbeLabels;
use sonde_agent::probes::retire::RETIRE_AFTER;
use sonde_agent::tables::Store;
use sonde_api::{
    AssignedProbe, BpftraceScriptSpec, DynamicLogSpec, PodTargets, ProbeConfig, ProbeOwner,
};

fn context(registry: &mut Registry) -> ProbeContext {
    common::context(&Store::default(), registry)
}

fn owner(kind: &str, namespace: Option<&str>, name: &str) -> ProbeOwner {
    ProbeOwner {
        kind: kind.into(),
        namespace: namespace.map(Into::into),
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: 1,
    }
}

/// A script limited to pods of `shop`, none of which runs here: it waits, no bpftrace runs.
fn pod_script(name: &str) -> (AssignedProbe, BpftraceScriptSpec) {
    let spec = BpftraceScriptSpec {
        program: "tracepoint:syscalls:sys_enter_openat { @n = count(); }".into(),
        node_selector: Default::default(),
        pods: Some(PodTargets {
            namespace: "shop".into(),
            selector: None,
            container: None,
        }),
        process: None,
        table_name: None,
        ttl: None,
    };
    let probe = AssignedProbe {
        id: format!("BpftraceScript/{name}"),
        owner: owner("BpftraceScript", None, name),
        config: ProbeConfig::BpftraceScript(spec.clone()),
        targets: Vec::new(),
        process: None,
    };
    (probe, spec)
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// Lets the paused runtime run what is due by `by` from now.
async fn pass(by: Duration) {
    tokio::time::sleep(by).await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_scripts_counters_go_five_minutes_after_it_stopped_unless_it_came_back() {
    let mut registry = Registry::default();
    let ctx = context(&mut registry);
    let metrics = &ctx.bpftrace.metrics;
    let restarts = |name: &str| {
        let line = format!(r#"sonde_bpftrace_restarts_total{{script="{name}"}} 1"#);
        scrape(&registry).lines().any(|l| l == line)
    };
    let mut scripts = Vec::new();
    for name in ["deleted", "back"] {
        let (probe, spec) = pod_script(name);
        scripts.push(BpftraceProbe::start(&ctx, &probe, &spec, &[]));
        metrics.restarts.get_or_create(&metrics.script(name)).inc();
    }
    for script in scripts {
        script.stop().await;
    }
    pass(RETIRE_AFTER / 2).await;
    // Applied again (same name) before its counters went: they stay.
    let (probe, spec) = pod_script("back");
    let back = BpftraceProbe::start(&ctx, &probe, &spec, &[]);
    pass(RETIRE_AFTER / 2 - Duration::from_secs(1)).await;
    assert!(restarts("deleted"), "gone before a last scrape");
    pass(Duration::from_secs(2)).await;
    assert!(!restarts("deleted"), "{}", scrape(&registry));
    assert!(restarts("back"), "{}", scrape(&registry));
    back.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_dynamic_logs_counters_go_five_minutes_after_it_stopped() {
    let mut registry = Registry::default();
    let ctx = context(&mut registry);
    let spec = DynamicLogSpec {
        selector: None,
        container: None,
        process: None,
        ttl: None,
        function: "sonde_e2e_tick".into(),
        capture: None,
        max_string_bytes: None,
        table_name: None,
        metrics: Vec::new(),
    };
    let probe = AssignedProbe {
        id: "DynamicLog/shop/tick".into(),
        owner: owner("DynamicLog", Some("shop"), "tick"),
        config: ProbeConfig::DynamicLog(spec.clone()),
        targets: Vec::new(),
        process: None,
    };
    let dl = DynamicLogProbe::start(&ctx, &probe, &spec, &[]);
    let labels = ProbeLabels {
        probe: probe.id.clone(),
    };
    ctx.dynamic_log.metrics.rows.get_or_create(&labels).inc();
    ctx.dynamic_log
        .metrics
        .unreturned
        .get_or_create(&labels)
        .inc();
    let ours = || {
        scrape(&registry)
            .matches(r#"probe="DynamicLog/shop/tick""#)
            .count()
    };
    assert_eq!(ours(), 2);
    dl.stop().await;
    pass(RETIRE_AFTER - Duration::from_secs(1)).await;
    assert_eq!(ours(), 2, "gone before a last scrape");
    pass(Duration::from_secs(2)).await;
    assert_eq!(ours(), 0, "{}", scrape(&registry));
}
