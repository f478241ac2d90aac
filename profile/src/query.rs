//! The parameters of a profile request (`seconds`, `namespace`, `pod`, `container`, `pid`, `hz`),
//! read alike by the agent (one node) and the operator (every node).
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::pprof::StackRow;

/// Sampling frequency when a profiler's spec has none.
pub const DEFAULT_FREQUENCY_HZ: u32 = 99;
/// Largest accepted `seconds`.
pub const MAX_SECONDS: u64 = 24 * 3600;
const DEFAULT_SECONDS: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileQueryError {
    #[error(
        "seconds={value} is not accepted: give a whole number from 1 to {MAX_SECONDS} (default {DEFAULT_SECONDS})"
    )]
    Seconds { value: String },
    #[error("pid={value} is not accepted: give a process id (a whole number)")]
    Pid { value: String },
    #[error(
        "hz={value} is not accepted: give the sampling frequency of the profiler, 1 to 1000 (default {DEFAULT_FREQUENCY_HZ})"
    )]
    Hz { value: String },
}

/// Parsed query parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileQuery {
    pub seconds: u64,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub pid: Option<i64>,
    /// Sampling frequency the CPU time of a sample is computed with.
    pub hz: u64,
}

impl ProfileQuery {
    pub fn parse(params: &HashMap<String, String>) -> Result<ProfileQuery, ProfileQueryError> {
        let seconds = match params.get("seconds") {
            None => DEFAULT_SECONDS,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=MAX_SECONDS).contains(&n) => n,
                _ => return Err(ProfileQueryError::Seconds { value: v.clone() }),
            },
        };
        let pid = params
            .get("pid")
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ProfileQueryError::Pid { value: v.clone() })
            })
            .transpose()?;
        let hz = match params.get("hz") {
            None => u64::from(DEFAULT_FREQUENCY_HZ),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return Err(ProfileQueryError::Hz { value: v.clone() }),
            },
        };
        let text = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(ProfileQuery {
            seconds,
            namespace: text("namespace"),
            pod: text("pod"),
            container: text("container"),
            pid,
            hz,
        })
    }

    /// Whether `row` is of the pod, container and process asked for.
    pub fn matches(&self, row: &StackRow) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.namespace, &row.namespace)
            && eq(&self.pod, &row.pod)
            && eq(&self.container, &row.container)
            && self.pid.is_none_or(|p| p == row.pid)
    }
}

impl ProfileQuery {
    /// The time asked for, ending now: its start (ns since the epoch) and its length (ns).
    pub fn window(&self) -> (i64, i64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let length = (self.seconds as i64) * 1_000_000_000;
        (now - length, length)
    }

    /// A flame graph's title: `CPU on <place> — last <seconds>s (<what was asked>)`.
    pub fn title(&self, place: &str) -> String {
        let mut scope: Vec<String> = [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        if let Some(pid) = self.pid {
            scope.push(format!("pid={pid}"));
        }
        let scope = if scope.is_empty() {
            String::new()
        } else {
            format!(" ({})", scope.join(", "))
        };
        format!("CPU on {place} — last {}s{scope}", self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_parameters_are_named_with_their_value() {
        let e = ProfileQuery::parse(&params(&[("seconds", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("seconds=0 is not accepted"));
        let e = ProfileQuery::parse(&params(&[("pid", "x")])).unwrap_err();
        assert!(e.to_string().starts_with("pid=x"));
        let q = ProfileQuery::parse(&params(&[("pod", "a"), ("namespace", "")])).unwrap();
        assert_eq!(q.seconds, 60);
        assert_eq!(q.pod.as_deref(), Some("a"));
        assert_eq!(q.namespace, None);
    }
}
