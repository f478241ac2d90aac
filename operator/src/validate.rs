//! Checks of the spec fields the API server accepts but the operator or the agents cannot use: pod
//! label selectors (the CRD takes any operator string), `process.exe` globs and `process.cmdline`
//! regular expressions.
//! The assignment pass leaves such a resource out, and its status says why.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::Selector;
use sonde_api::Targeting;

use crate::resources::SondeResource;

/// A spec field that cannot be used; the message names the field, the bad value and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    #[error(
        "{field}.matchExpressions[{index}].operator: {operator:?} is not a label selector operator; use In, NotIn, Exists or DoesNotExist"
    )]
    Operator {
        field: &'static str,
        index: usize,
        operator: String,
    },
    #[error(
        "{field}.matchExpressions[{index}] ({key} {operator}): values is empty; list the label values to match, or use Exists or DoesNotExist"
    )]
    MissingValues {
        field: &'static str,
        index: usize,
        key: String,
        operator: String,
    },
    #[error(
        "{field}.matchExpressions[{index}] ({key} {operator}): takes no values but has {values:?}; remove values, or use In or NotIn"
    )]
    UnexpectedValues {
        field: &'static str,
        index: usize,
        key: String,
        operator: String,
        values: Vec<String>,
    },
    #[error("{field}: {message}; fix the label selector")]
    Selector {
        field: &'static str,
        message: String,
    },
    #[error(
        "spec.process.cmdline: {value:?} is not a valid regular expression ({problem}); fix the pattern (escape ( ) [ ] . * + ? with \\ to match them literally)"
    )]
    Cmdline { value: String, problem: String },
    #[error(
        "spec.process.exe: {value:?} is not a valid path or glob ({problem}); use a path such as /usr/sbin/nginx or a glob such as */nginx (escape [ ] {{ }} * ? with \\ to match them literally)"
    )]
    Exe { value: String, problem: String },
}

/// The resource's pod selector (absent: every pod of the namespace), once its fields check out.
pub fn check<K: SondeResource>(res: &K) -> Result<Selector, InvalidSpec> {
    let spec = res.spec();
    if let Some(exe) = spec.process().and_then(|p| p.exe.as_deref()) {
        exe_glob(exe)?;
    }
    if let Some(cmdline) = spec.process().and_then(|p| p.cmdline.as_deref()) {
        cmdline_regex(cmdline)?;
    }
    match spec.selector() {
        Some(ls) => pod_selector(ls, K::SELECTOR_FIELD),
        None => Ok(Selector::default()),
    }
}

fn pod_selector(ls: &LabelSelector, field: &'static str) -> Result<Selector, InvalidSpec> {
    for (index, req) in ls.match_expressions.iter().flatten().enumerate() {
        requirement(req, field, index)?;
    }
    // Anything the checks above let through but kube cannot turn into a selector.
    Selector::try_from(ls.clone()).map_err(|e| InvalidSpec::Selector {
        field,
        message: e.0,
    })
}

/// Kubernetes' own rules for a `matchExpressions` entry (which a CRD does not apply).
fn requirement(
    req: &LabelSelectorRequirement,
    field: &'static str,
    index: usize,
) -> Result<(), InvalidSpec> {
    let values = req.values.as_deref().unwrap_or_default();
    let op = req.operator.as_str();
    match op {
        "In" | "NotIn" if values.is_empty() => Err(InvalidSpec::MissingValues {
            field,
            index,
            key: req.key.clone(),
            operator: op.to_owned(),
        }),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err(InvalidSpec::UnexpectedValues {
            field,
            index,
            key: req.key.clone(),
            operator: op.to_owned(),
            values: values.to_vec(),
        }),
        "In" | "NotIn" | "Exists" | "DoesNotExist" => Ok(()),
        _ => Err(InvalidSpec::Operator {
            field,
            index,
            operator: op.to_owned(),
        }),
    }
}

/// The agent compiles `exe` with the same crate and options; a glob it refuses would fail the probe
/// on every node, each saying so in its own NodeAssignment.
fn exe_glob(value: &str) -> Result<(), InvalidSpec> {
    globset::Glob::new(value)
        .map(drop)
        .map_err(|e| InvalidSpec::Exe {
            value: value.to_owned(),
            problem: e.kind().to_string(),
        })
}

/// The agent compiles `cmdline` with the same crate; a pattern it refuses would leave the probe
/// pending on every node without a word.
fn cmdline_regex(value: &str) -> Result<(), InvalidSpec> {
    regex::Regex::new(value).map(drop).map_err(|e| {
        // A syntax error spans lines (pattern, caret, "error: …"); keep the line that explains it.
        let text = e.to_string();
        let problem = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map_or_else(
                || text.split_whitespace().collect::<Vec<_>>().join(" "),
                str::to_owned,
            );
        InvalidSpec::Cmdline {
            value: value.to_owned(),
            problem,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use sonde_api::ProcessSelector;
    use std::sync::Arc;

    fn with_expr(op: &str, values: &[&str]) -> Arc<sonde_api::Tracepoint> {
        let selector = LabelSelector {
            match_expressions: Some(vec![expr("tier", "In", &["web"]), expr("app", op, values)]),
            ..Default::default()
        };
        tracepoint("team-a", "t15", Some(selector))
    }

    #[test]
    fn an_unknown_operator_is_named_with_its_field_and_the_valid_ones() {
        let err = check(&*with_expr("Equals", &["x"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.selector.matchExpressions[1].operator: \"Equals\" is not a label selector operator; use In, NotIn, Exists or DoesNotExist"
        );
        assert!(check(&*with_expr("NotIn", &["x"])).is_ok());
        assert!(check(&*with_expr("Exists", &[])).is_ok());
    }

    #[test]
    fn values_must_fit_the_operator() {
        let err = check(&*with_expr("In", &[])).unwrap_err().to_string();
        assert!(
            err.contains("matchExpressions[1] (app In): values is empty"),
            "{err}"
        );
        let err = check(&*with_expr("DoesNotExist", &["x"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes no values but has [\"x\"]"), "{err}");
    }

    #[test]
    fn a_bpftrace_scripts_selector_is_named_by_its_own_field() {
        let mut script = bpftrace("uprobes");
        Arc::make_mut(&mut script).spec.pods = Some(sonde_api::PodTargets {
            namespace: "shop".into(),
            selector: Some(LabelSelector {
                match_expressions: Some(vec![expr("app", "equals", &["x"])]),
                ..Default::default()
            }),
            container: None,
        });
        let err = check(&*script).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.pods.selector.matchExpressions[0].operator: \"equals\""),
            "{err}"
        );
    }

    #[test]
    fn an_exe_that_is_no_glob_is_refused_with_the_glob_error() {
        let mut tp = tracepoint("shop", "by-exe", None);
        Arc::make_mut(&mut tp).spec.process = Some(ProcessSelector {
            exe: Some("/usr/bin/[nginx".into()),
            cmdline: None,
        });
        let err = check(&*tp).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.process.exe: \"/usr/bin/[nginx\" is not a valid path or glob (unclosed character class; missing ']'); use a path such as /usr/sbin/nginx or a glob such as */nginx (escape [ ] { } * ? with \\ to match them literally)"
        );
        Arc::make_mut(&mut tp).spec.process = Some(ProcessSelector {
            exe: Some("*/ngin[x]".into()),
            cmdline: None,
        });
        assert!(check(&*tp).is_ok());
    }

    #[test]
    fn a_cmdline_that_is_no_regular_expression_is_refused_with_the_regex_error() {
        let mut tp = tracepoint("shop", "by-cmdline", None);
        Arc::make_mut(&mut tp).spec.process = Some(ProcessSelector {
            exe: None,
            cmdline: Some("foo((".into()),
        });
        let err = check(&*tp).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.process.cmdline: \"foo((\" is not a valid regular expression (unclosed group); fix the pattern (escape ( ) [ ] . * + ? with \\ to match them literally)"
        );
        Arc::make_mut(&mut tp).spec.process = Some(ProcessSelector {
            exe: None,
            cmdline: Some(r"foo\(\(".into()),
        });
        assert!(check(&*tp).is_ok());
    }
}
