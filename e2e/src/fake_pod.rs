//! Pods without a kubelet: the Pod object is created with `spec.nodeName` set, its status patched to
//! Running with a `containerd://` id, and a real process is started in the cgroup kubelet (systemd
//! driver) + containerd would have made for that container, so the agent's pod→process mapping is real.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rand::Rng;
use serde_json::json;

use crate::process::{Proc, run};

/// The cgroup2 mount point (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup2 mount in /proc/mounts: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")
}

/// The cgroup kubelet's systemd driver + containerd give a BestEffort pod's container.
pub fn container_cgroup(root: &Path, pod_uid: &str, container_id: &str) -> PathBuf {
    let uid = pod_uid.replace('-', "_");
    root.join("kubepods.slice")
        .join("kubepods-besteffort.slice")
        .join(format!("kubepods-besteffort-pod{uid}.slice"))
        .join(format!("cri-containerd-{container_id}.scope"))
}

/// A random 64-hex-digit container id, as containerd makes them.
pub fn random_container_id() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Creates (or updates) a Node object with these labels and marks it Ready.
pub async fn create_node(
    client: &kube::Client,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut all_labels = labels.clone();
    all_labels.insert("kubernetes.io/hostname".into(), name.into());
    all_labels.insert("kubernetes.io/os".into(), "linux".into());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": all_labels },
    }))?;
    let pp = PatchParams::apply("sonde-e2e").force();
    nodes
        .patch(name, &pp, &Patch::Apply(&node))
        .await
        .with_context(|| format!("creating Node {name}"))?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "e2e",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await
        .with_context(|| format!("marking Node {name} Ready"))?;
    Ok(())
}

/// Compiles the test program: it calls `sonde_e2e_tick(n)` ten times a second forever, so uprobes and
/// syscall tracepoints on it fire. Returns the binary's path.
pub fn compile_ticker(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("ticker.c");
    let bin = dir.join("ticker");
    std::fs::write(
        &src,
        r#"#include <unistd.h>
__attribute__((noinline, used)) int sonde_e2e_tick(int n) {
    __asm__ volatile("" ::: "memory");
    return n + 1;
}
int main(void) {
    int n = 0;
    for (;;) {
        n = sonde_e2e_tick(n);
        usleep(100000);
    }
}
"#,
    )
    .with_context(|| format!("writing {}", src.display()))?;
    run(Command::new("cc")
        .args(["-O1", "-g", "-o"])
        .arg(&bin)
        .arg(&src))
    .context("compiling the ticker test program: install a C compiler (`apt-get install gcc`)")?;
    Ok(bin)
}

/// A pod to fake.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub container: String,
    /// The container's process: program and arguments.
    pub command: Vec<String>,
}

/// A Running pod backed by a real process in a kubelet-style cgroup. Dropping it stops the process
/// and removes the cgroup (the Pod object is left to [`FakePod::delete`]).
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    pub container_id: String,
    pub cgroup: PathBuf,
    process: Option<Proc>,
}

impl FakePod {
    pub async fn start(client: &kube::Client, spec: &PodSpec, log_dir: &Path) -> Result<FakePod> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": spec.name, "namespace": spec.namespace, "labels": spec.labels },
            "spec": {
                "nodeName": spec.node,
                "containers": [{ "name": spec.container, "image": "sonde-e2e/fake:1", "command": spec.command }],
            },
        }))?;
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating Pod {}/{}", spec.namespace, spec.name))?;
        let uid = created
            .metadata
            .uid
            .context("the API server returned a Pod without a uid")?;
        let container_id = random_container_id();
        let cgroup = container_cgroup(&cgroup2_root()?, &uid, &container_id);
        std::fs::create_dir_all(&cgroup).with_context(|| {
            format!(
                "creating cgroup {} (needs root and a writable cgroup2 mount)",
                cgroup.display()
            )
        })?;
        let mut fake = FakePod {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            uid,
            container: spec.container.clone(),
            container_id,
            cgroup,
            process: None,
        };
        // The shell joins the cgroup before exec, so the program never runs outside it.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&fake.cgroup)
            .args(&spec.command);
        fake.process = Some(Proc::spawn(
            &format!("pod-{}-{}", spec.namespace, spec.name),
            cmd,
            log_dir,
        )?);
        let procs_file = fake.cgroup.join("cgroup.procs");
        crate::wait::until(
            "the pod's process in its cgroup",
            Duration::from_secs(10),
            || {
                let content = std::fs::read_to_string(&procs_file).unwrap_or_default();
                async move { Ok((!content.trim().is_empty()).then_some(())) }
            },
        )
        .await?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        pods.patch_status(
            &spec.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "phase": "Running",
                "podIP": "10.244.0.10",
                "startTime": now,
                "conditions": [
                    { "type": "Ready", "status": "True", "lastTransitionTime": now },
                    { "type": "ContainersReady", "status": "True", "lastTransitionTime": now },
                ],
                "containerStatuses": [{
                    "name": spec.container,
                    "containerID": format!("containerd://{}", fake.container_id),
                    "image": "sonde-e2e/fake:1",
                    "imageID": "",
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": { "running": { "startedAt": now } },
                }],
            }})),
        )
        .await
        .with_context(|| format!("patching Pod {}/{} to Running", spec.namespace, spec.name))?;
        Ok(fake)
    }

    /// Pid of the container's process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Proc::pid)
    }

    /// Deletes the Pod object (immediately, as no kubelet will confirm) and stops its process.
    pub async fn delete(mut self, client: &kube::Client) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        pods.delete(&self.name, &DeleteParams::default().grace_period(0))
            .await
            .with_context(|| format!("deleting Pod {}/{}", self.namespace, self.name))?;
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(2));
        }
        // rmdir fails while the kernel still accounts an exiting task to the cgroup: retry a little.
        let mut dir = Some(self.cgroup.as_path());
        for _ in 0..4 {
            let Some(d) = dir else { break };
            let mut tries = 0;
            while d.exists() {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(_) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => bail!("removing cgroup {}: {e}", d.display()),
                }
            }
            dir = d.parent();
            // Parents are shared with other fake pods: stop at the first that is not empty.
            if dir.is_some_and(|p| {
                std::fs::read_dir(p)
                    .map(|mut it| it.any(|e| e.map(|e| e.path().is_dir()).unwrap_or(false)))
                    .unwrap_or(true)
            }) {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("e2e: {e:#}");
        }
    }
}
