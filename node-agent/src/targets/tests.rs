//! Resolution rules over a hand-made process table (the real-kernel test is tests/targets.rs).
use std::collections::BTreeMap;

use sonde_api::{
    AssignedProbe, BpftraceScriptSpec, PodTarget, ProbeConfig, ProbeOwner, ProcessSelector,
};

use super::*;

const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn process(pid: u32, exe: &str, cmdline: &str, container_id: Option<&str>) -> ProcessInfo {
    ProcessInfo {
        pid,
        exe: exe.into(),
        started_as: None,
        cmdline: cmdline.into(),
        container: container_id.map(|id| ContainerIdentity {
            pod_uid: "uid-1".into(),
            container_id: id.into(),
        }),
    }
}

fn table() -> ProcessTable {
    ProcessTable::from_processes(vec![
        process(10, "/usr/sbin/nginx", "nginx: master process", Some(ID_A)),
        process(11, "/usr/sbin/nginx", "nginx: worker process", Some(ID_A)),
        process(
            20,
            "/usr/bin/redis-server",
            "redis-server *:6379",
            Some(ID_B),
        ),
        process(30, "/usr/sbin/nginx", "nginx: worker process", None),
        process(std::process::id(), "/usr/sbin/nginx", "sonde-agent", None),
    ])
}

fn probe(targets: Vec<PodTarget>, process: Option<ProcessSelector>) -> AssignedProbe {
    AssignedProbe {
        id: "BpftraceScript/x".into(),
        owner: ProbeOwner {
            kind: "BpftraceScript".into(),
            name: "x".into(),
            ..Default::default()
        },
        config: ProbeConfig::BpftraceScript(BpftraceScriptSpec {
            program: "BEGIN {}".into(),
            node_selector: BTreeMap::new(),
            pods: None,
            process: process.clone(),
            table_name: None,
            ttl: None,
        }),
        targets,
        process,
    }
}

fn target(container_id: &str) -> PodTarget {
    PodTarget {
        pod_uid: "uid-1".into(),
        namespace: "shop".into(),
        pod: "web-0".into(),
        container: "nginx".into(),
        container_id: container_id.into(),
    }
}

fn exe(glob: &str) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        exe: Some(glob.into()),
        cmdline: None,
    })
}

fn pids(targets: &[TargetProcess]) -> Vec<u32> {
    targets.iter().map(|t| t.pid).collect()
}

#[test]
fn pod_targets_select_the_processes_of_their_container_with_kubernetes_fields() {
    let resolved = table().resolve(&probe(vec![target(&format!("containerd://{ID_A}"))], None));
    assert_eq!(pids(&resolved), [10, 11]);
    let first = &resolved[0];
    assert_eq!(
        (
            first.namespace.as_str(),
            first.pod.as_str(),
            first.container.as_str(),
            first.container_id.as_str()
        ),
        ("shop", "web-0", "nginx", ID_A)
    );
}

#[test]
fn a_process_selector_narrows_pod_targets() {
    let selector = Some(ProcessSelector {
        exe: None,
        cmdline: Some("worker".into()),
    });
    let resolved = table().resolve(&probe(vec![target(ID_A), target(ID_B)], selector));
    assert_eq!(pids(&resolved), [11]);
}

#[test]
fn without_targets_a_selector_picks_host_processes_without_kubernetes_fields_and_never_the_agent() {
    let resolved = table().resolve(&probe(vec![], exe("*/nginx")));
    assert_eq!(pids(&resolved), [10, 11, 30]);
    assert!(
        resolved
            .iter()
            .all(|t| t.pod.is_empty() && t.container_id.is_empty())
    );
}

#[test]
fn no_targets_and_no_selector_select_nothing_and_nor_do_unstarted_containers() {
    assert!(table().resolve(&probe(vec![], None)).is_empty());
    assert!(table().resolve(&probe(vec![target("")], None)).is_empty());
}

#[test]
fn a_bad_glob_selects_nothing_instead_of_panicking() {
    assert!(
        table()
            .resolve(&probe(vec![], exe("/usr/[sbin")))
            .is_empty()
    );
}
