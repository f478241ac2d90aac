//! Pods → cgroups → processes on the real kernel (needs root and a writable cgroup2 mount).
//!
//! [`KubeletCgroup`] creates a cgroup named exactly as kubelet (systemd cgroup driver) and containerd
//! name a container's cgroup, and moves a real process into it — the same trick the e2e tests use to
//! make pod → process mapping real without a container runtime.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sonde_agent::targets::{ProcessTable, TargetProcess};
use sonde_api::{
    AssignedProbe, BpftraceScriptSpec, PodTarget, ProbeConfig, ProbeOwner, ProcessSelector,
};

/// A process living in `<cgroup2>/<prefix>.slice/kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`. Dropping it kills the process and
/// removes the directories, also when the test fails.
struct KubeletCgroup {
    pod_uid: String,
    container_id: String,
    /// Created directories, outermost first.
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl KubeletCgroup {
    fn start(program: &str, args: &[&str]) -> KubeletCgroup {
        let unique = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id());
        let hex = format!("{unique:016x}");
        let pod_uid = format!(
            "{}-{}-4{}-a{}-{}{}",
            &hex[..8],
            &hex[8..12],
            &hex[13..16],
            &hex[1..4],
            &hex[..8],
            &hex[12..16]
        );
        let container_id = hex.repeat(4);
        let mut cgroup = KubeletCgroup {
            pod_uid,
            container_id,
            dirs: Vec::new(),
            child: None,
        };

        let mut dir = cgroup2_mount().join(format!("sonde-test-{unique:x}.slice"));
        fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e} (needs root)", dir.display()));
        cgroup.dirs.push(dir.clone());
        for component in [
            "kubepods.slice".to_owned(),
            "kubepods-burstable.slice".to_owned(),
            format!(
                "kubepods-burstable-pod{}.slice",
                cgroup.pod_uid.replace('-', "_")
            ),
            format!("cri-containerd-{}.scope", cgroup.container_id),
        ] {
            dir = dir.join(component);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            cgroup.dirs.push(dir.clone());
        }
        let child = Command::new(program).args(args).spawn().unwrap();
        let pid = child.id();
        cgroup.child = Some(child);
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        cgroup
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }
}

impl Drop for KubeletCgroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.dirs.iter().rev() {
            // A cgroup whose last process was just reaped can be busy for a moment.
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The first cgroup2 mount in /proc/mounts (/sys/fs/cgroup or, on hybrid machines, .../unified).
fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1]))
        .expect("this test needs a cgroup2 mount")
}

fn probe(targets: Vec<PodTarget>, process: Option<ProcessSelector>) -> AssignedProbe {
    AssignedProbe {
        id: "BpftraceScript/targets-test".into(),
        owner: ProbeOwner {
            kind: "BpftraceScript".into(),
            name: "targets-test".into(),
            ..Default::default()
        },
        config: ProbeConfig::BpftraceScript(BpftraceScriptSpec {
            program: "BEGIN {}".into(),
            node_selector: Default::default(),
            pods: None,
            process: process.clone(),
            table_name: None,
            ttl: None,
        }),
        targets,
        process,
    }
}

fn pod_target(cgroup: &KubeletCgroup) -> PodTarget {
    PodTarget {
        pod_uid: cgroup.pod_uid.clone(),
        namespace: "shop".into(),
        pod: "web-0".into(),
        container: "app".into(),
        container_id: format!("containerd://{}", cgroup.container_id),
    }
}

#[test]
fn a_process_in_a_kubelet_named_cgroup_resolves_to_its_pod_and_container() {
    let cgroup = KubeletCgroup::start("sleep", &["30"]);
    let table = ProcessTable::scan().unwrap();

    let resolved = table.resolve(&probe(vec![pod_target(&cgroup)], None));

    let only: &[TargetProcess] = &resolved;
    assert_eq!(only.len(), 1, "{resolved:?}");
    let target = &only[0];
    assert_eq!(target.pid, cgroup.pid());
    assert_eq!(
        (
            target.namespace.as_str(),
            target.pod.as_str(),
            target.container.as_str()
        ),
        ("shop", "web-0", "app")
    );
    assert_eq!(target.pod_uid, cgroup.pod_uid);
    assert_eq!(target.container_id, cgroup.container_id);
    assert_eq!(target.exe.file_name().unwrap(), "sleep");
    assert_eq!(target.cmdline, "sleep 30");
}

#[test]
fn a_process_selector_narrows_the_processes_of_a_pod() {
    let cgroup = KubeletCgroup::start("sleep", &["30"]);
    let table = ProcessTable::scan().unwrap();
    let selector = |exe: &str| {
        Some(ProcessSelector {
            exe: Some(exe.into()),
            cmdline: None,
        })
    };

    let kept = table.resolve(&probe(vec![pod_target(&cgroup)], selector("*/sleep")));
    let dropped = table.resolve(&probe(vec![pod_target(&cgroup)], selector("*/nginx")));

    assert_eq!(
        kept.iter().map(|t| t.pid).collect::<Vec<_>>(),
        [cgroup.pid()]
    );
    assert!(dropped.is_empty(), "{dropped:?}");
}

#[test]
fn standalone_selectors_find_host_processes_without_kubernetes_fields() {
    let unique = format!("30.{}", std::process::id());
    let mut child = Command::new("sleep").arg(&unique).spawn().unwrap();
    let cmdline = format!(r"^sleep {}$", regex_escape(&unique));
    let selector = ProcessSelector {
        exe: None,
        cmdline: Some(cmdline),
    };
    let resolved = resolve_standalone(selector);
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].pid, child.id());
    assert!(resolved[0].pod.is_empty() && resolved[0].container_id.is_empty());
}

#[test]
fn a_program_started_through_a_symlink_is_selected_by_the_symlink_s_name() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sonde-sleeper-{}", std::process::id());
    let link = dir.path().join(&name);
    std::os::unix::fs::symlink(fs::canonicalize("/usr/bin/sleep").unwrap(), &link).unwrap();
    let mut child = Command::new(&link).arg("30").spawn().unwrap();
    let selector = ProcessSelector {
        exe: Some(format!("*/{name}")),
        cmdline: None,
    };
    let resolved = resolve_standalone(selector);
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].pid, child.id());
    // The kernel names the file the link points to.
    assert_eq!(resolved[0].exe.file_name().unwrap(), "sleep");
}

/// The processes a standalone probe with `selector` resolves to, once there are any (5 s at most).
fn resolve_standalone(selector: ProcessSelector) -> Vec<TargetProcess> {
    // Poll: other tests fork and exec concurrently, and a scan is a snapshot of a moving /proc.
    let probe = probe(vec![], Some(selector));
    for _ in 0..50 {
        let resolved = ProcessTable::scan().unwrap().resolve(&probe);
        if !resolved.is_empty() {
            return resolved;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Vec::new()
}

/// Waits until process `pid` runs `exe` (5 s at most).
fn wait_for_exe(pid: u32, exe: &str) {
    for _ in 0..50 {
        if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == std::path::Path::new(exe)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("process {pid} does not run {exe}");
}

fn regex_escape(s: &str) -> String {
    s.replace('.', r"\.")
}

#[test]
fn a_program_started_by_name_through_a_symlink_in_its_path_is_selected_by_that_name() {
    // As a shell or an image's CMD starts Debian's `redis-server` (a symlink to redis-check-rdb):
    // by name, found through PATH; the process's first argument has no directory.
    let dir = tempfile::tempdir().unwrap();
    let name = format!("sonde-napper-{}", std::process::id());
    std::os::unix::fs::symlink(
        fs::canonicalize("/usr/bin/sleep").unwrap(),
        dir.path().join(&name),
    )
    .unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let mut child = Command::new(&name)
        .env("PATH", &path)
        .arg("30")
        .spawn()
        .unwrap();
    // Another process calling itself so, whose PATH leads to another file of that name: not
    // what runs in it, so not selected through it.
    let other_dir = tempfile::tempdir().unwrap();
    fs::write(other_dir.path().join(&name), "#!/bin/sh\n").unwrap();
    let mut decoy = Command::new("/usr/bin/sleep")
        .arg0(&name)
        .env("PATH", other_dir.path())
        .arg("30")
        .spawn()
        .unwrap();
    // Spawning returns before the exec completes: the selection is about the programs run.
    wait_for_exe(child.id(), "/usr/bin/sleep");
    wait_for_exe(decoy.id(), "/usr/bin/sleep");
    let resolved = resolve_standalone(ProcessSelector {
        exe: Some(format!("*/{name}")),
        cmdline: None,
    });
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].pid, child.id());
    assert_eq!(resolved[0].exe.file_name().unwrap(), "sleep");
    let _ = decoy.kill();
    let _ = decoy.wait();
}

#[test]
fn debian_s_redis_server_started_by_name_is_selected_as_redis_server() {
    // /usr/bin/redis-server is a symlink to redis-check-rdb, and redis-server writes its title over
    // its arguments and environment: `redis-server 127.0.0.1:<port>`, no PATH left to read.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("redis-server")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting redis-server (installed by scripts/setup peers)");
    // Its title is set once it runs.
    for _ in 0..50 {
        let cmdline = fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
        if cmdline.starts_with(format!("redis-server 127.0.0.1:{port}").as_bytes()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let resolved = resolve_standalone(ProcessSelector {
        exe: Some("*/redis-server".into()),
        cmdline: Some(format!(":{port}")),
    });
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].pid, child.id());
    assert_eq!(resolved[0].exe, PathBuf::from("/usr/bin/redis-check-rdb"));
}
