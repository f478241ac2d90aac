//! Kubernetes identity (pod uid, container id) from a process's cgroup paths.
//!
//! Hand-written: the naming rules below are kubelet's and the runtimes' conventions, which no crate
//! parses. Covered: cgroup v2 (`0::/path`) and v1 (`N:controllers:/path`) lines, hybrid machines that
//! have both, the systemd driver
//! (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`,
//! `crio-<id>.scope`, `docker-<id>.scope`) and the cgroupfs driver (`/kubepods/burstable/pod<uid>/<id>`),
//! every QoS class, under any prefix (`/kubelet.slice/...`, a kind node's `/kubelet/...`) and with
//! sub-cgroups inside the container.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones), from /proc/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cgroup v2 path of process `pid` (`/` for the root cgroup), from its `0::` line; None when
/// it is gone.
pub fn v2_path(pid: u32) -> Option<String> {
    let contents = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    contents
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The id of the cgroup v2 at `path` under `mount`: the inode number of its directory, what
/// `bpf_get_current_cgroup_id` (and bpftrace's `cgroup`) returns for its tasks.
pub fn v2_id(mount: &Path, path: &str) -> Option<u64> {
    let dir = mount.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// The cgroup v2 id of process `pid`; None when it is gone.
pub fn cgroup_id(mount: &Path, pid: u32) -> Option<u64> {
    v2_id(mount, &v2_path(pid)?)
}

/// The pod and container a process belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerIdentity {
    /// Pod uid with dashes, as in `metadata.uid` (the systemd driver writes `_` instead of `-`).
    pub pod_uid: String,
    /// Runtime container id (hex), without any `containerd://`-style prefix.
    pub container_id: String,
}

/// One line of `/proc/<pid>/cgroup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// Hierarchy id; 0 for the cgroup v2 (unified) hierarchy.
    pub hierarchy: u32,
    /// Comma-separated v1 controllers (`cpu,cpuacct`, `name=systemd`); empty for v2.
    pub controllers: &'a str,
    pub path: &'a str,
}

/// Parses one `/proc/<pid>/cgroup` line; None for a malformed line.
pub fn parse_line(line: &str) -> Option<CgroupLine<'_>> {
    let mut parts = line.splitn(3, ':');
    let hierarchy = parts.next()?.parse().ok()?;
    let controllers = parts.next()?;
    let path = parts.next()?;
    Some(CgroupLine {
        hierarchy,
        controllers,
        path,
    })
}

/// The container identity found in the contents of `/proc/<pid>/cgroup`, preferring the v2 line
/// (on a hybrid machine the v1 lines may still name the same container; either is fine).
pub fn identity_from_file(contents: &str) -> Option<ContainerIdentity> {
    let lines: Vec<CgroupLine<'_>> = contents.lines().filter_map(parse_line).collect();
    let v2 = lines.iter().filter(|l| l.hierarchy == 0);
    let v1 = lines.iter().filter(|l| l.hierarchy != 0);
    v2.chain(v1).find_map(|l| identity_from_path(l.path))
}

/// The container identity in one cgroup path, if it is a Kubernetes container's cgroup (or below).
pub fn identity_from_path(path: &str) -> Option<ContainerIdentity> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut seen_kubepods = false;
    for (i, component) in components.iter().enumerate() {
        if let Some(pod_uid) = pod_uid_of(component, seen_kubepods) {
            let container_id = components.get(i + 1).and_then(|c| container_id_of(c))?;
            return Some(ContainerIdentity {
                pod_uid,
                container_id,
            });
        }
        seen_kubepods |= component.starts_with("kubepods");
    }
    None
}

/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd driver) or `pod<uid>` below a
/// `kubepods*` component (cgroupfs driver).
fn pod_uid_of(component: &str, below_kubepods: bool) -> Option<String> {
    let raw = if let Some(slice) = component.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        let (_, uid) = slice.rsplit_once("-pod")?;
        uid
    } else if below_kubepods {
        component.strip_prefix("pod")?
    } else {
        return None;
    };
    let uid = raw.replace('_', "-");
    // UUIDs for API pods, 32 hex digits (a hash) for static pods.
    let valid = !uid.is_empty() && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` (systemd driver), or a bare
/// `<id>` / `crio-<id>` (cgroupfs driver). CRI-O's `crio-conmon-<id>.scope` is its monitor process,
/// not the container, so it does not match.
fn container_id_of(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    // Runtime ids are 64 hex digits; accept docker's 12-digit short form and longer.
    let valid = id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit());
    valid.then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cgroup_id() {
        let mount = cgroup2_mount().expect("cgroup2 is mounted on the test machines");
        assert!(cgroup_id(&mount, std::process::id()).is_some());
    }

    const ID: &str = "4e4b4a6e1d5b9f3a2c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3";
    const UID: &str = "8b0e3a52-1c4f-4d8e-9a6b-2f7c1d3e5a90";

    fn identity() -> Option<ContainerIdentity> {
        Some(ContainerIdentity {
            pod_uid: UID.into(),
            container_id: ID.into(),
        })
    }

    #[test]
    fn containerd_with_systemd_driver_on_cgroup_v2_is_recognised() {
        let file = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(identity_from_file(&file), identity());
    }

    #[test]
    fn guaranteed_pods_have_no_qos_slice_and_are_recognised() {
        let path = format!(
            "/kubepods.slice/kubepods-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(identity_from_path(&path), identity());
    }

    #[test]
    fn crio_with_systemd_driver_is_recognised_and_its_conmon_is_not() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/crio-{ID}.scope"
        );
        assert_eq!(identity_from_path(&path), identity());
        let conmon = path.replace("crio-", "crio-conmon-");
        assert_eq!(identity_from_path(&conmon), None);
    }

    #[test]
    fn docker_with_systemd_driver_on_cgroup_v1_is_recognised() {
        let file = format!(
            "12:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/docker-{ID}.scope\n\
             11:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/docker-{ID}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/docker-{ID}.scope\n\
             0::/\n"
        );
        assert_eq!(identity_from_file(&file), identity());
    }

    #[test]
    fn cgroupfs_driver_paths_of_every_qos_class_are_recognised() {
        for qos in ["burstable/", "besteffort/", ""] {
            let file = format!("4:memory:/kubepods/{qos}pod{UID}/{ID}\n0::/\n");
            assert_eq!(identity_from_file(&file), identity(), "qos {qos:?}");
        }
    }

    #[test]
    fn nested_prefixes_and_sub_cgroups_inside_the_container_are_recognised() {
        let kind = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubepods-burstable-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice/cri-containerd-{ID}.scope/init.scope"
        );
        assert_eq!(identity_from_file(&kind), identity());
        let cgroupfs = format!("0::/kubelet/kubepods/besteffort/pod{UID}/{ID}/sub");
        assert_eq!(identity_from_file(&cgroupfs), identity());
    }

    #[test]
    fn crio_with_cgroupfs_driver_is_recognised() {
        let path = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
        assert_eq!(identity_from_path(&path), identity());
    }

    #[test]
    fn host_processes_and_pod_level_cgroups_have_no_identity() {
        for file in [
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            "9:name=systemd:/user.slice/user-0.slice/session-1.scope\n0::/user.slice\n",
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8b0e3a52_1c4f_4d8e_9a6b_2f7c1d3e5a90.slice\n",
            "0::/pod8b0e3a52-1c4f-4d8e-9a6b-2f7c1d3e5a90/4e4b4a6e1d5b9f3a2c7d8e9f0a1b2c3d\n",
            "garbage\n",
        ] {
            assert_eq!(identity_from_file(file), None, "{file:?}");
        }
    }

    #[test]
    fn v1_lines_with_colons_in_the_path_parse() {
        let line = parse_line("4:memory:/process_api/a:b").unwrap();
        assert_eq!(
            line,
            CgroupLine {
                hierarchy: 4,
                controllers: "memory",
                path: "/process_api/a:b"
            }
        );
    }
}
