//! Matching processes against a [`ProcessSelector`]: `exe` is an exact path or a glob (globset) over
//! the executable path inside the process's root, `cmdline` a regular expression searched in the
//! command line.
use globset::{Glob, GlobMatcher};
use regex::Regex;
use sonde_api::ProcessSelector;
use sonde_common::conn::{EXEC_FILE_NAME_MAX, ExecName};

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

/// What the kernel can match for `selector` in a process's exec (see [`ExecName`]), for a
/// selector of `exe` alone: an absolute path without glob characters, or `*/` and a file name of
/// at most [`EXEC_FILE_NAME_MAX`] bytes (several in braces: `*/{curl,wget}`), each matching exactly
/// what the glob matches. The rest — other globs and alternatives (`*/python3*`), longer names,
/// command lines — is left to the process scan.
pub fn exec_names(selector: &ProcessSelector) -> Vec<ExecName> {
    const GLOB: &[char] = &['*', '?', '[', ']', '{', '}', '\\', ','];
    let plain = |name: &str| !name.is_empty() && !name.contains(GLOB);
    let (Some(exe), None) = (selector.exe.as_deref(), &selector.cmdline) else {
        return Vec::new();
    };
    let names: Vec<String> = if exe.starts_with('/') && plain(exe) {
        vec![exe.to_owned()]
    } else if let Some(file) = exe.strip_prefix("*/") {
        let alternatives: Vec<&str> = match file.strip_prefix('{').and_then(|f| f.strip_suffix('}'))
        {
            Some(inside) => inside.split(',').collect(),
            None => vec![file],
        };
        alternatives
            .into_iter()
            .filter(|name| plain(name) && !name.contains('/') && name.len() <= EXEC_FILE_NAME_MAX)
            .map(|name| format!("*/{name}"))
            .collect()
    } else {
        Vec::new()
    };
    names
        .iter()
        .filter_map(|name| ExecName::new(name.as_bytes()))
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
        let names = |exe: &str, cmdline: Option<&str>| -> Vec<String> {
            exec_names(&selector(Some(exe), cmdline))
                .iter()
                .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
                .collect()
        };
        assert_eq!(names("/usr/bin/curl", None), ["/usr/bin/curl"]);
        assert_eq!(names("*/curl", None), ["*/curl"]);
        assert_eq!(names("*/{curl,wget,python3*}", None), ["*/curl", "*/wget"]);
        for scan_only in ["*/python3*", "/usr/bin/*", "**/curl", "curl", "*/bin/curl"] {
            assert!(names(scan_only, None).is_empty(), "{scan_only}");
        }
        assert!(names("*/curl", Some("example.com")).is_empty());
        assert_eq!(names("*/redis-sentinel", None), ["*/redis-sentinel"]);
        assert!(
            names("*/postgres_exporter", None).is_empty(),
            "15 bytes and more"
        );
        assert!(names(&format!("/{}", "x".repeat(63)), None).is_empty());
        assert!(exec_names(&selector(None, Some("curl"))).is_empty());
        // Each name matches what the glob matches: `*/` a file name in any directory.
        let glob = ProcessMatcher::new(&selector(Some("*/{curl,wget,python3*}"), None)).unwrap();
        assert!(glob.matches(Path::new("/opt/x/wget"), None, ""));
        assert!(!glob.matches(Path::new("/opt/x/wget2"), None, ""));
        assert!(!glob.matches(Path::new("/opt/wget/x"), None, ""));
    }
}
