//! Rewrites `uprobe:`/`uretprobe:` paths so that they name binaries inside the target processes'
//! root filesystems (`/proc/<pid>/root/<path>`), one attach point per distinct file.
//!
//! A script written as `uprobe:/usr/local/bin/app:handle` attaches to the `app` of every selected
//! pod: the path is looked up under each target's root, files are de-duplicated by (device, inode)
//! so a binary shared by many processes is probed once, and the resulting specs are comma-joined.
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::program::attach_points;
use crate::targets::TargetProcess;

const UPROBE_KINDS: [&str; 4] = ["uprobe", "uretprobe", "u", "ur"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UprobePathError {
    #[error(
        "uprobe path {path} exists in none of the target processes ({searched}); check the path inside the container image or the script's pod selector"
    )]
    NotFound { path: String, searched: String },
}

/// The program to run and how many target processes its uprobes resolved into.
#[derive(Debug, PartialEq)]
pub struct Resolved {
    pub program: String,
    /// Target processes in which at least one uprobe path exists; None when no path was rewritten.
    pub targets_attached: Option<u32>,
}

/// Rewrites every absolute uprobe path of `program` into the targets' roots. Without targets, or
/// without absolute uprobe paths, the program is returned unchanged: the host's paths (a script
/// with `spec.pods` never gets here without targets, and is limited to them by [`super::pod_filter`]).
pub fn resolve(program: &str, targets: &[TargetProcess]) -> Result<Resolved, UprobePathError> {
    resolve_with(program, targets, |pid, path| {
        let host = PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
        let meta = std::fs::metadata(&host).ok()?;
        meta.is_file().then(|| (meta.dev(), meta.ino()))
    })
}

/// `resolve` with the file lookup injected: `lookup(pid, path)` → (dev, inode) when the file exists.
fn resolve_with(
    program: &str,
    targets: &[TargetProcess],
    lookup: impl Fn(u32, &str) -> Option<(u64, u64)>,
) -> Result<Resolved, UprobePathError> {
    let mut out = String::with_capacity(program.len());
    let mut copied = 0;
    let mut resolved_pids = BTreeSet::new();
    let mut any_uprobe = false;
    for range in attach_points(program) {
        let point = &program[range.clone()];
        let Some((kind, path, rest)) = split_uprobe(point) else {
            continue;
        };
        if targets.is_empty() {
            continue;
        }
        any_uprobe = true;
        let mut seen_files = BTreeSet::new();
        let mut specs = Vec::new();
        for target in targets {
            let Some(file) = lookup(target.pid, path) else {
                continue;
            };
            resolved_pids.insert(target.pid);
            if seen_files.insert(file) {
                specs.push(format!("{kind}:/proc/{}/root{path}:{rest}", target.pid));
            }
        }
        if specs.is_empty() {
            return Err(UprobePathError::NotFound {
                path: path.to_string(),
                searched: describe(targets),
            });
        }
        out.push_str(&program[copied..range.start]);
        out.push_str(&specs.join(","));
        copied = range.end;
    }
    out.push_str(&program[copied..]);
    let targets_attached =
        any_uprobe.then(|| u32::try_from(resolved_pids.len()).unwrap_or(u32::MAX));
    Ok(Resolved {
        program: out,
        targets_attached,
    })
}

/// `uprobe:/bin/app:func` → (`uprobe`, `/bin/app`, `func`) for absolute paths only.
fn split_uprobe(point: &str) -> Option<(&str, &str, &str)> {
    let (kind, after) = point.split_once(':')?;
    if !UPROBE_KINDS.contains(&kind) || !after.starts_with('/') {
        return None;
    }
    let (path, rest) = after.split_once(':')?;
    Some((kind, path, rest))
}

/// `ns/pod (pid 12), …` or, standalone, `pid 12, …`; at most 5 listed.
fn describe(targets: &[TargetProcess]) -> String {
    let mut names: Vec<String> = targets
        .iter()
        .take(5)
        .map(|t| {
            if t.pod.is_empty() {
                format!("pid {}", t.pid)
            } else {
                format!("{}/{} (pid {})", t.namespace, t.pod, t.pid)
            }
        })
        .collect();
    if targets.len() > 5 {
        names.push(format!("and {} more", targets.len() - 5));
    }
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: u32, pod: &str) -> TargetProcess {
        TargetProcess {
            pid,
            namespace: if pod.is_empty() {
                String::new()
            } else {
                "shop".into()
            },
            pod: pod.into(),
            pod_uid: String::new(),
            container: String::new(),
            container_id: String::new(),
            exe: "/app/server".into(),
            cmdline: String::new(),
        }
    }

    /// pids 10 and 11 share one binary (same inode), pid 20 has its own, pid 30 lacks it.
    fn lookup(pid: u32, path: &str) -> Option<(u64, u64)> {
        match (pid, path) {
            (10 | 11, "/app/server") => Some((1, 100)),
            (20, "/app/server") => Some((1, 200)),
            (_, "/lib/libssl.so") if pid != 30 => Some((2, 7)),
            _ => None,
        }
    }

    #[test]
    fn uprobe_paths_are_rewritten_per_distinct_file_and_comma_joined() {
        let program = "uprobe:/app/server:handle, uretprobe:/app/server:handle /pid > 1/ { printf(\"x\\n\"); }\nBEGIN { }";
        let targets = [
            target(10, "a"),
            target(11, "b"),
            target(20, "c"),
            target(30, "d"),
        ];
        let resolved = resolve_with(program, &targets, lookup).unwrap();
        assert_eq!(
            resolved.program,
            "uprobe:/proc/10/root/app/server:handle,uprobe:/proc/20/root/app/server:handle, \
             uretprobe:/proc/10/root/app/server:handle,uretprobe:/proc/20/root/app/server:handle /pid > 1/ { printf(\"x\\n\"); }\nBEGIN { }"
        );
        assert_eq!(resolved.targets_attached, Some(3));
    }

    #[test]
    fn short_kinds_are_rewritten_and_library_names_are_left_alone() {
        let program = "u:/lib/libssl.so:SSL_write { }\nur:libc:malloc { }";
        let resolved = resolve_with(program, &[target(30, ""), target(40, "")], lookup).unwrap();
        assert_eq!(
            resolved.program,
            "u:/proc/40/root/lib/libssl.so:SSL_write { }\nur:libc:malloc { }"
        );
        assert_eq!(resolved.targets_attached, Some(1));
    }

    #[test]
    fn a_path_found_in_no_target_names_the_path_and_the_pods() {
        let err =
            resolve_with("uprobe:/app/missing:f { }", &[target(10, "web-1")], lookup).unwrap_err();
        assert_eq!(
            err,
            UprobePathError::NotFound {
                path: "/app/missing".into(),
                searched: "shop/web-1 (pid 10)".into()
            }
        );
        assert!(err.to_string().contains("/app/missing"));
    }

    #[test]
    fn without_targets_the_program_is_unchanged() {
        let program = "uprobe:/app/server:handle { @c = count(); }";
        let resolved = resolve_with(program, &[], lookup).unwrap();
        assert_eq!(
            resolved,
            Resolved {
                program: program.into(),
                targets_attached: None
            }
        );
    }
}
