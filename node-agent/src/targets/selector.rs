//! Matching processes against a [`ProcessSelector`]: `exe` is an exact path or a glob (globset) over
//! the executable path inside the process's root, `cmdline` a regular expression searched in the
//! command line.
use globset::{Glob, GlobMatcher};
use regex::Regex;
use sonde_api::ProcessSelector;
use sonde_common::conn::{COMM_BYTES, EXEC_FILE_NAME_MAX, EXEC_PATH_BYTES};

use super::TargetsError;

/// A compiled [`ProcessSelector`].
#[derive(Clone, Debug)]
pub struct ProcessMatcher {
    exe: Option<(String, GlobMatcher)>,
    cmdline: Option<Regex>,
}

impl ProcessMatcher {
    /// Compiles the selector; the error names the field and the bad value.
    pub fn new(selector: &ProcessSelector) -> Result<Self, TargetsError> {
        let exe = match &selector.exe {
            Some(value) => {
                let glob = Glob::new(value).map_err(|source| TargetsError::ExeGlob {
                    value: value.clone(),
                    source,
                })?;
                Some((value.clone(), glob.compile_matcher()))
            }
            None => None,
        };
        let cmdline = match &selector.cmdline {
            Some(value) => {
                Some(
                    Regex::new(value).map_err(|source| TargetsError::CmdlineRegex {
                        value: value.clone(),
                        source: Box::new(source),
                    })?,
                )
            }
            None => None,
        };
        Ok(ProcessMatcher { exe, cmdline })
    }

    /// Whether a process with this executable and command line is selected (both fields must match
    /// when both are set; an empty selector matches everything). `exe` also matches the path the
    /// process was started as ([`super::ProcessInfo::started_as`]): the name a user knows a
    /// program by may be a symlink (Debian's `/usr/bin/redis-server` runs `redis-check-rdb`, a
    /// multi-call binary answers to many names).
    pub fn matches(
        &self,
        exe: &std::path::Path,
        started_as: Option<&std::path::Path>,
        cmdline: &str,
    ) -> bool {
        let exe_ok = self.exe.as_ref().is_none_or(|(literal, glob)| {
            let hit = |path: &std::path::Path| {
                path.as_os_str() == literal.as_str() || glob.is_match(path)
            };
            hit(exe) || started_as.is_some_and(hit)
        });
        let cmdline_ok = self.cmdline.as_ref().is_none_or(|re| re.is_match(cmdline));
        exe_ok && cmdline_ok
    }
}

/// Checks that a selector's glob and regular expression compile.
pub fn validate(selector: &ProcessSelector) -> Result<(), TargetsError> {
    ProcessMatcher::new(selector).map(|_| ())
}

/// A program a process selector names exactly, which the kernel can match in a process's exec
/// (see `sonde_common::conn::names::EXEC_PATHS_MAP` and `EXEC_FILES_MAP`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecPattern {
    /// An absolute path of at most 63 bytes, matched against the path the program was started by.
    Path(String),
    /// A file name of at most [`EXEC_FILE_NAME_MAX`] bytes, or (`prefix`) the start of one of at
    /// most 15, matched against the started program's file name.
    File { name: String, prefix: bool },
}

impl ExecPattern {
    /// Does a program started by `path` (empty if unknown), whose thread's name is `comm`, match?
    pub fn matches(&self, path: &[u8], comm: &[u8]) -> bool {
        match self {
            ExecPattern::Path(p) => p.as_bytes() == path,
            ExecPattern::File { name, prefix: true } => comm.starts_with(name.as_bytes()),
            ExecPattern::File {
                name,
                prefix: false,
            } => comm == name.as_bytes(),
        }
    }

    /// How a standalone process running such a program is labelled (as
    /// [`super::TargetProcess::container_label`] does it): the file name, or its start.
    pub fn label(&self) -> &str {
        match self {
            ExecPattern::Path(path) => path.rsplit('/').next().unwrap_or(path),
            ExecPattern::File { name, .. } => name,
        }
    }
}

/// What the kernel can match for `selector` in a process's exec, for a selector of `exe` alone: an
/// absolute path without glob characters, or `*/` and a file name or the start of one (`*/curl`,
/// `*/python3*`; several in braces: `*/{curl,wget,python3*}`), each matching only what the glob
/// matches. The rest — other globs, longer names, command lines — is left to the process scan.
pub fn exec_patterns(selector: &ProcessSelector) -> Vec<ExecPattern> {
    const GLOB: &[char] = &['*', '?', '[', ']', '{', '}', '\\', ','];
    let plain = |name: &str| !name.is_empty() && !name.contains(GLOB);
    let (Some(exe), None) = (selector.exe.as_deref(), &selector.cmdline) else {
        return Vec::new();
    };
    if exe.starts_with('/') {
        return (plain(exe) && exe.len() < EXEC_PATH_BYTES)
            .then(|| ExecPattern::Path(exe.to_owned()))
            .into_iter()
            .collect();
    }
    let Some(file) = exe.strip_prefix("*/") else {
        return Vec::new();
    };
    let alternatives: Vec<&str> = match file.strip_prefix('{').and_then(|f| f.strip_suffix('}')) {
        Some(inside) => inside.split(',').collect(),
        None => vec![file],
    };
    alternatives
        .into_iter()
        .filter_map(|alternative| {
            let (name, prefix) = match alternative.strip_suffix('*') {
                Some(start) => (start, true),
                None => (alternative, false),
            };
            let fits = if prefix {
                name.len() < COMM_BYTES
            } else {
                name.len() <= EXEC_FILE_NAME_MAX
            };
            (plain(name) && !name.contains('/') && fits).then(|| ExecPattern::File {
                name: name.to_owned(),
                prefix,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn selector(exe: Option<&str>, cmdline: Option<&str>) -> ProcessSelector {
        ProcessSelector {
            exe: exe.map(Into::into),
            cmdline: cmdline.map(Into::into),
        }
    }

    #[test]
    fn exact_paths_and_globs_match_the_executable() {
        let exact = ProcessMatcher::new(&selector(Some("/usr/sbin/nginx"), None)).unwrap();
        assert!(exact.matches(Path::new("/usr/sbin/nginx"), None, ""));
        assert!(!exact.matches(Path::new("/usr/sbin/nginx2"), None, ""));
        let glob = ProcessMatcher::new(&selector(Some("*/nginx"), None)).unwrap();
        assert!(glob.matches(Path::new("/usr/sbin/nginx"), None, ""));
        assert!(!glob.matches(Path::new("/usr/bin/redis-server"), None, ""));
    }

    #[test]
    fn a_program_started_through_a_symlink_matches_by_the_symlink_s_path_too() {
        let m = ProcessMatcher::new(&selector(Some("*/redis-server"), None)).unwrap();
        let exe = Path::new("/usr/bin/redis-check-rdb");
        let link = Some(Path::new("/usr/bin/redis-server"));
        assert!(m.matches(exe, link, "redis-server 127.0.0.1:6379"));
        assert!(!m.matches(exe, None, "redis-server 127.0.0.1:6379"));
        let exact = ProcessMatcher::new(&selector(Some("/usr/bin/redis-server"), None)).unwrap();
        assert!(exact.matches(exe, link, "/usr/bin/redis-server *:6379"));
    }

    #[test]
    fn cmdline_is_a_regex_searched_anywhere_and_both_fields_must_match() {
        let m = ProcessMatcher::new(&selector(Some("*/sleep"), Some(r"^sleep \d+$"))).unwrap();
        assert!(m.matches(Path::new("/usr/bin/sleep"), None, "sleep 30"));
        assert!(!m.matches(Path::new("/usr/bin/sleep"), None, "sleep infinity"));
        assert!(!m.matches(Path::new("/usr/bin/cat"), None, "sleep 30"));
        let any = ProcessMatcher::new(&selector(None, Some("worker"))).unwrap();
        assert!(any.matches(Path::new("/x"), None, "nginx: worker process"));
    }

    #[test]
    fn bad_glob_and_bad_regex_are_reported_with_field_and_value() {
        let err = validate(&selector(Some("/usr/[bin"), None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("process.exe") && err.contains("/usr/[bin"),
            "{err}"
        );
        let err = validate(&selector(None, Some("(unclosed")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("process.cmdline") && err.contains("(unclosed"),
            "{err}"
        );
    }

    #[test]
    fn the_kernel_matches_at_exec_only_programs_a_selector_names_exactly() {
        let patterns = |exe: &str, cmdline: Option<&str>| -> Vec<String> {
            exec_patterns(&selector(Some(exe), cmdline))
                .iter()
                .map(|p| match p {
                    ExecPattern::Path(path) => path.clone(),
                    ExecPattern::File { name, prefix } => {
                        format!("*/{name}{}", if *prefix { "*" } else { "" })
                    }
                })
                .collect()
        };
        assert_eq!(patterns("/usr/bin/curl", None), ["/usr/bin/curl"]);
        assert_eq!(patterns("*/curl", None), ["*/curl"]);
        assert_eq!(patterns("*/python3*", None), ["*/python3*"]);
        assert_eq!(
            patterns("*/{curl,wget,python3*,py*n}", None),
            ["*/curl", "*/wget", "*/python3*"]
        );
        assert_eq!(patterns("*/redis-sentinel", None), ["*/redis-sentinel"]);
        assert_eq!(patterns("*/postgres_export*", None), ["*/postgres_export*"]);
        for scan_only in [
            "/usr/bin/*",
            "**/curl",
            "curl",
            "*/bin/curl",
            "*/*",
            "*/py*n",
            "*/postgres_exporter",  // 17 bytes: more than a thread's name holds
            "*/postgres_exporter*", // the start of one, 17 bytes
        ] {
            assert!(patterns(scan_only, None).is_empty(), "{scan_only}");
        }
        assert!(patterns("*/curl", Some("example.com")).is_empty());
        assert!(patterns(&format!("/{}", "x".repeat(63)), None).is_empty());
        assert!(exec_patterns(&selector(None, Some("curl"))).is_empty());
    }

    #[test]
    fn what_the_kernel_matches_at_exec_the_glob_matches_too() {
        // Programs as execve starts them: (path, thread name = file name cut to 15 bytes).
        let programs = [
            ("/usr/bin/curl", "curl"),
            ("/usr/bin/curly", "curly"),
            ("/usr/bin/python3.11", "python3.11"),
            ("/opt/python3/bin/app", "app"),
            ("/usr/local/bin/postgres_exporter", "postgres_export"),
        ];
        for exe in [
            "/usr/bin/curl",
            "*/curl",
            "*/{curl,python3*}",
            "*/postgres_export*",
        ] {
            let glob = ProcessMatcher::new(&selector(Some(exe), None)).unwrap();
            for pattern in exec_patterns(&selector(Some(exe), None)) {
                for (path, comm) in programs {
                    if pattern.matches(path.as_bytes(), comm.as_bytes()) {
                        assert!(
                            glob.matches(Path::new(path), None, ""),
                            "{pattern:?} matched {path}, {exe} does not"
                        );
                    }
                }
            }
        }
        let curl = ExecPattern::File {
            name: "curl".into(),
            prefix: false,
        };
        assert!(curl.matches(b"", b"curl") && !curl.matches(b"", b"curly"));
        assert_eq!(curl.label(), "curl");
        assert_eq!(ExecPattern::Path("/usr/bin/psql".into()).label(), "psql");
    }
}
