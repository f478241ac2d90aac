//! Standalone mode: Tracepoint, DynamicLog and BpftraceScript resources read from YAML files.
//!
//! A file or every `*.yaml`/`*.yml` of a directory is read (multi-document). Documents are checked
//! locally the way the cluster's OpenAPI schema and CEL rules check them, plus what standalone needs
//! (`spec.process` for pod-oriented kinds). Every problem names the file, the document, the resource,
//! the field and the value, and says what to do; problems are logged, shown in `/v1/status` and
//! counted, and never stop the agent (only a path missing at startup does, see [`check`]). Files
//! are reloaded when they change (inotify via `notify`, debounced) and polled as a fallback. A file
//! with problems keeps its last good resources running until it is fixed or deleted (see
//! [`LastGood`]). `spec.ttl` counts from the first load of a spec version.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sonde_api::{
    AssignedProbe, BpftraceScriptSpec, DynamicLogSpec, ProbeConfig, ProbeOwner, ProcessSelector,
    TracepointSpec,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::probes::ManagerHandle;
use crate::telemetry::Telemetry;

/// Where a document is: file, 1-based document index and, once known, kind and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file.display(), self.document)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n})"),
            (Some(k), None) => write!(f, " ({k})"),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "cannot read {path}: {source}; check the path given to --manifests and that the agent may read it"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: not valid YAML: {source}; fix the syntax (documents are separated by ---)")]
    Yaml {
        at: Box<Location>,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error(
        "{at}: field {field}: {message}; compare with the files in examples/ or `kubectl explain`"
    )]
    Schema {
        at: Box<Location>,
        field: String,
        message: String,
    },
    #[error("{at}: field {field} is {value}: {problem}")]
    Invalid {
        at: Box<Location>,
        field: String,
        value: String,
        problem: String,
    },
    #[error("{at}: {id} is already defined at {first}; give one of them another metadata.name")]
    Duplicate {
        at: Box<Location>,
        id: String,
        first: Box<Location>,
    },
}

impl ManifestError {
    /// The file the problem is in.
    pub fn file(&self) -> &Path {
        match self {
            ManifestError::Read { path, .. } => path,
            ManifestError::Yaml { at, .. }
            | ManifestError::Schema { at, .. }
            | ManifestError::Invalid { at, .. }
            | ManifestError::Duplicate { at, .. } => &at.file,
        }
    }

    /// The serializable form shown in `/v1/status`.
    pub fn report(&self) -> ManifestErrorReport {
        let document = match self {
            ManifestError::Read { .. } => None,
            ManifestError::Yaml { at, .. }
            | ManifestError::Schema { at, .. }
            | ManifestError::Invalid { at, .. }
            | ManifestError::Duplicate { at, .. } => Some(at.document),
        };
        ManifestErrorReport {
            file: self.file().display().to_string(),
            document,
            message: self.to_string(),
        }
    }
}

/// One manifest problem as `/v1/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestErrorReport {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    pub message: String,
}

/// A probe read from a file, with its ttl.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalProbe {
    pub probe: AssignedProbe,
    pub ttl: Option<Duration>,
    pub at: Location,
}

/// Everything read from `--manifests`: the probes and every problem found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub probes: Vec<LocalProbe>,
    pub errors: Vec<ManifestError>,
    /// The files that exist, readable or not: a file missing here was deleted.
    pub files: Vec<PathBuf>,
    /// Per file with problems, the probes still running from its last good version (see [`LastGood`]).
    pub kept: BTreeMap<PathBuf, Vec<String>>,
}

impl Loaded {
    /// Every problem as `/v1/status` shows it, saying which last good resources keep running.
    pub fn reports(&self) -> Vec<ManifestErrorReport> {
        self.errors
            .iter()
            .map(|e| {
                let mut report = e.report();
                if let Some(ids) = self.kept.get(e.file()) {
                    report.message.push_str(&format!(
                        "; until the file is fixed, its last good version keeps running ({})",
                        ids.join(", ")
                    ));
                }
                report
            })
            .collect()
    }
}

/// What each file last contributed, so that a file that turns bad keeps running what it ran, as a
/// cluster keeps the old object when a bad `kubectl apply` is rejected. Files are told apart by path
/// (the resources of a file also carry it in their owner uid); a deleted file's resources go.
#[derive(Debug, Default)]
pub struct LastGood {
    by_file: BTreeMap<PathBuf, Vec<LocalProbe>>,
}

impl LastGood {
    /// Adds to `loaded` the remembered probes of its files with problems that no file defines now,
    /// then remembers what every file contributes.
    pub fn keep(&mut self, loaded: &mut Loaded) {
        self.by_file.retain(|file, _| loaded.files.contains(file));
        let bad: HashSet<&Path> = loaded.errors.iter().map(ManifestError::file).collect();
        let defined: HashSet<String> = loaded.probes.iter().map(|p| p.probe.id.clone()).collect();
        for (file, probes) in &self.by_file {
            if !bad.contains(file.as_path()) {
                continue;
            }
            // A resource defined now (in this file or another) runs as defined now.
            for local in probes.iter().filter(|p| !defined.contains(&p.probe.id)) {
                loaded
                    .kept
                    .entry(file.clone())
                    .or_default()
                    .push(local.probe.id.clone());
                loaded.probes.push(local.clone());
            }
        }
        self.by_file = loaded
            .files
            .iter()
            .map(|file| {
                let probes = loaded.probes.iter().filter(|p| p.at.file == *file);
                (file.clone(), probes.cloned().collect())
            })
            .collect();
    }
}

const API_VERSION: &str = "sonde.dev/v1alpha1";
const KINDS: &str = "Tracepoint, DynamicLog or BpftraceScript";

/// The manifest files at `path`: the file itself, or the `*.yaml`/`*.yml` files of a directory, sorted.
fn files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        // Let the read report a missing file.
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            yaml && !hidden && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `path` exists and can be listed (a directory) or read (a file): checked once at
/// startup, since a mistyped path would otherwise run nothing while looking healthy.
pub fn check(path: &Path) -> Result<(), ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(read_err)?.is_dir() {
        std::fs::read_dir(path).map_err(read_err)?;
    } else {
        std::fs::File::open(path).map_err(read_err)?;
    }
    Ok(())
}

/// Reads every manifest at `path` (a file or a directory).
pub fn load(path: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let files = match files(path) {
        Ok(f) => f,
        Err(e) => {
            loaded.errors.push(e);
            return loaded;
        }
    };
    let mut seen: HashMap<String, Location> = HashMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(source) => {
                if source.kind() != std::io::ErrorKind::NotFound {
                    loaded.files.push(file.clone());
                }
                loaded
                    .errors
                    .push(ManifestError::Read { path: file, source });
                continue;
            }
        };
        loaded.files.push(file.clone());
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let at = Location {
                file: file.clone(),
                document: i + 1,
                kind: None,
                name: None,
            };
            let value = match serde_yaml_ng::Value::deserialize(doc) {
                Ok(v) => v,
                Err(source) => {
                    loaded.errors.push(ManifestError::Yaml {
                        at: Box::new(at),
                        source,
                    });
                    // The parser cannot resume after a syntax error in this file.
                    break;
                }
            };
            if value.is_null() || is_other_kubernetes_object(&value) {
                continue;
            }
            match parse_document(at, value) {
                Ok(local) => {
                    if let Some(first) = seen.get(&local.probe.id) {
                        loaded.errors.push(ManifestError::Duplicate {
                            at: Box::new(local.at.clone()),
                            id: local.probe.id.clone(),
                            first: Box::new(first.clone()),
                        });
                    } else {
                        seen.insert(local.probe.id.clone(), local.at.clone());
                        loaded.probes.push(local);
                    }
                }
                Err(mut errs) => loaded.errors.append(&mut errs),
            }
        }
    }
    loaded
}

fn invalid(
    at: &Location,
    field: &str,
    value: impl fmt::Display,
    problem: impl Into<String>,
) -> ManifestError {
    ManifestError::Invalid {
        at: Box::new(at.clone()),
        field: field.to_owned(),
        value: value.to_string(),
        problem: problem.into(),
    }
}

fn show(v: &serde_yaml_ng::Value) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("{v:?}"))
}

/// Typed spec via serde, with the path of the offending field in the error.
fn typed<T: serde::de::DeserializeOwned>(
    at: &Location,
    spec: serde_yaml_ng::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        ManifestError::Schema {
            at: Box::new(at.clone()),
            field,
            message: e.into_inner().to_string(),
        }
    })
}

/// A Kubernetes object of another API (a Namespace, a ConfigMap) in a directory shared with a
/// cluster's manifests: not Sonde's to run, and no mistake. One naming a Sonde kind, or Sonde's
/// group, is Sonde's, and checked (a mistyped apiVersion is reported).
fn is_other_kubernetes_object(value: &serde_yaml_ng::Value) -> bool {
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or_default();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let sonde_kind = matches!(
        kind,
        "Tracepoint" | "DynamicLog" | "BpftraceScript" | "NodeAssignment"
    );
    !api_version.is_empty()
        && !kind.is_empty()
        && !sonde_kind
        && !api_version.starts_with("sonde.dev/")
}

fn parse_document(
    mut at: Location,
    value: serde_yaml_ng::Value,
) -> Result<LocalProbe, Vec<ManifestError>> {
    let serde_yaml_ng::Value::Mapping(map) = value else {
        return Err(vec![invalid(
            &at,
            "(document)",
            show(&value),
            format!(
                "a document must be a {KINDS} resource (a mapping with apiVersion, kind, metadata and spec)"
            ),
        )]);
    };
    for key in map.keys() {
        let k = key.as_str().unwrap_or_default();
        if !matches!(k, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            return Err(vec![ManifestError::Schema {
                at: Box::new(at),
                field: show(key),
                message: "unknown top-level field, expected apiVersion, kind, metadata and spec"
                    .into(),
            }]);
        }
    }
    let get = |k: &str| map.get(k).cloned().unwrap_or(serde_yaml_ng::Value::Null);
    let kind = get("kind");
    let kind = kind.as_str().unwrap_or_default().to_owned();
    if !matches!(
        kind.as_str(),
        "Tracepoint" | "DynamicLog" | "BpftraceScript"
    ) {
        let problem = if kind == "NodeAssignment" {
            format!(
                "NodeAssignments are written by the operator in a cluster; standalone mode reads {KINDS}"
            )
        } else {
            format!("use {KINDS}")
        };
        return Err(vec![invalid(&at, "kind", show(&get("kind")), problem)]);
    }
    at.kind = Some(kind.clone());
    let metadata = get("metadata");
    let name = metadata
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_owned();
    let name_ok = regex_is(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", &name);
    if !name_ok {
        let value = metadata
            .get("name")
            .map(show)
            .unwrap_or_else(|| "missing".into());
        return Err(vec![invalid(
            &at,
            "metadata.name",
            value,
            "give a lower-case name of letters, digits, '-' and '.' (like a Kubernetes object name)",
        )]);
    }
    at.name = Some(name.clone());
    let api_version = get("apiVersion");
    if api_version.as_str() != Some(API_VERSION) {
        return Err(vec![invalid(
            &at,
            "apiVersion",
            show(&api_version),
            format!("use {API_VERSION}"),
        )]);
    }
    let namespaced = kind != "BpftraceScript";
    let namespace = if namespaced {
        match metadata.get("namespace") {
            None => Some("default".to_owned()),
            Some(ns) => match ns.as_str() {
                Some(s) if regex_is(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", s) => {
                    Some(s.to_owned())
                }
                _ => {
                    return Err(vec![invalid(
                        &at,
                        "metadata.namespace",
                        show(ns),
                        "give a lower-case DNS label such as default",
                    )]);
                }
            },
        }
    } else {
        None
    };
    let spec = get("spec");
    if spec.is_null() {
        return Err(vec![invalid(
            &at,
            "spec",
            "missing",
            format!("a {kind} needs a spec; see examples/"),
        )]);
    }
    let (config, ttl, process) = match kind.as_str() {
        "Tracepoint" => {
            let spec: TracepointSpec = typed(&at, spec).map_err(|e| vec![e])?;
            let errors = check_tracepoint(&at, &spec);
            finish(
                errors,
                ProbeConfig::Tracepoint(spec.clone()),
                spec.ttl.as_deref(),
                spec.process,
                &at,
            )?
        }
        "DynamicLog" => {
            let spec: DynamicLogSpec = typed(&at, spec).map_err(|e| vec![e])?;
            let errors = check_dynamic_log(&at, &spec);
            finish(
                errors,
                ProbeConfig::DynamicLog(spec.clone()),
                spec.ttl.as_deref(),
                spec.process,
                &at,
            )?
        }
        _ => {
            let spec: BpftraceScriptSpec = typed(&at, spec).map_err(|e| vec![e])?;
            let errors = check_bpftrace(&at, &spec);
            finish(
                errors,
                ProbeConfig::BpftraceScript(spec.clone()),
                spec.ttl.as_deref(),
                spec.process,
                &at,
            )?
        }
    };
    let generation = spec_generation(&config);
    let probe = AssignedProbe {
        id: AssignedProbe::id_for(&kind, namespace.as_deref(), &name),
        owner: ProbeOwner {
            kind,
            namespace,
            name: name.clone(),
            uid: format!("local:{}#{name}", at.file.display()),
            generation,
        },
        config,
        targets: Vec::new(),
        process,
    };
    Ok(LocalProbe { probe, ttl, at })
}

type Finished = (ProbeConfig, Option<Duration>, Option<ProcessSelector>);

fn finish(
    mut errors: Vec<ManifestError>,
    config: ProbeConfig,
    ttl: Option<&str>,
    process: Option<ProcessSelector>,
    at: &Location,
) -> Result<Finished, Vec<ManifestError>> {
    let ttl = match ttl.map(sonde_api::duration::parse).transpose() {
        // As the CRD's rule: a ttl of zero would remove the probe as it starts.
        Ok(Some(t)) if t.is_zero() => {
            errors.push(invalid(
                at,
                "spec.ttl",
                ttl.unwrap_or_default(),
                "write a duration above zero such as 90s, 30m or 1h30m",
            ));
            None
        }
        Ok(t) => t,
        Err(e) => {
            errors.push(invalid(
                at,
                "spec.ttl",
                &e.value,
                "write a duration such as 90s, 30m or 1h30m (units: ns, us, ms, s, m, h)",
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok((config, ttl, process))
    } else {
        Err(errors)
    }
}

fn regex_is(pattern: &str, value: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(value))
}

/// The lower-case identifier rule of table and column names (same as the CRD's CEL rule).
fn check_identifier(errors: &mut Vec<ManifestError>, at: &Location, field: &str, value: &str) {
    if value.is_empty() || value.len() > 63 || !regex_is(r"^[a-z_][a-z0-9_]*$", value) {
        errors.push(invalid(at, field, format!("{value:?}"), "must be a lower-case identifier of at most 63 characters: letters, digits and _, not starting with a digit"));
    }
}

fn check_process(
    errors: &mut Vec<ManifestError>,
    at: &Location,
    process: Option<&ProcessSelector>,
    required: bool,
) {
    let Some(p) = process else {
        if required {
            errors.push(invalid(at, "spec.process", "missing", "standalone mode has no pods to select: add spec.process with exe (a path or glob such as */nginx) or cmdline (a regular expression)"));
        }
        return;
    };
    if p.exe.is_none() && p.cmdline.is_none() {
        errors.push(invalid(
            at,
            "spec.process",
            "{}",
            "process needs exe (a path or glob such as */nginx) or cmdline (a regular expression)",
        ));
    }
    if let Some(exe) = &p.exe {
        if let Err(e) = globset::Glob::new(exe) {
            errors.push(invalid(at, "spec.process.exe", format!("{exe:?}"), format!("not a valid glob ({e}); write a path such as /usr/sbin/nginx or a glob such as */nginx")));
        }
        if exe.is_empty() {
            errors.push(invalid(
                at,
                "spec.process.exe",
                "\"\"",
                "give a path or glob, or leave exe out",
            ));
        }
    }
    if let Some(cmdline) = &p.cmdline
        && let Err(e) = regex::Regex::new(cmdline)
    {
        errors.push(invalid(
            at,
            "spec.process.cmdline",
            format!("{cmdline:?}"),
            format!("not a valid regular expression: {e}"),
        ));
    }
}

fn check_container(errors: &mut Vec<ManifestError>, at: &Location, container: Option<&str>) {
    if let Some(c) = container
        && (c.is_empty() || c.len() > 253)
    {
        errors.push(invalid(
            at,
            "spec.container",
            format!("{c:?}"),
            "give a container name of 1 to 253 characters, or leave it out",
        ));
    }
}

fn check_tracepoint(at: &Location, spec: &TracepointSpec) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    check_process(&mut errors, at, spec.process.as_ref(), true);
    check_container(&mut errors, at, spec.container.as_deref());
    let probe = &spec.probe;
    match (&probe.protocols, &probe.profiler) {
        (Some(_), Some(_)) => errors.push(invalid(
            at,
            "spec.probe",
            "both protocols and profiler",
            "spec.probe must set exactly one of protocols or profiler",
        )),
        (None, None) => errors.push(invalid(
            at,
            "spec.probe",
            "neither protocols nor profiler",
            "spec.probe must set exactly one of protocols or profiler",
        )),
        _ => {}
    }
    if let Some(p) = &probe.protocols
        && !(1..=16).contains(&p.len())
    {
        errors.push(invalid(
            at,
            "spec.probe.protocols",
            format!("a list of {}", p.len()),
            "list 1 to 16 protocols: http, dns, pgsql, mysql, redis",
        ));
    }
    if let Some(p) = &probe.profiler
        && !(1..=1000).contains(&p.frequency_hz)
    {
        errors.push(invalid(
            at,
            "spec.probe.profiler.frequencyHz",
            p.frequency_hz,
            "give samples per second from 1 to 1000 (default 99)",
        ));
    }
    if let Some(b) = probe.max_body_bytes
        && b > 65536
    {
        errors.push(invalid(
            at,
            "spec.probe.maxBodyBytes",
            b,
            "give 0 to 65536 bytes",
        ));
    }
    errors
}

fn check_dynamic_log(at: &Location, spec: &DynamicLogSpec) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    check_process(&mut errors, at, spec.process.as_ref(), true);
    check_container(&mut errors, at, spec.container.as_deref());
    if spec.function.trim().is_empty() || spec.function.len() > 1024 {
        errors.push(invalid(
            at,
            "spec.function",
            format!("{:?}", spec.function),
            "spec.function must name a function, e.g. main.(*Server).PlaceOrder",
        ));
    }
    if let Some(t) = &spec.table_name {
        check_identifier(&mut errors, at, "spec.tableName", t);
    }
    if let Some(n) = spec.max_string_bytes
        && !(1..=4096).contains(&n)
    {
        errors.push(invalid(
            at,
            "spec.maxStringBytes",
            n,
            "give 1 to 4096 bytes (default 64)",
        ));
    }
    if let Some(c) = &spec.capture {
        for (list, exprs) in [("args", &c.args), ("returns", &c.returns)] {
            if exprs.len() > 32 {
                errors.push(invalid(
                    at,
                    &format!("spec.capture.{list}"),
                    format!("a list of {}", exprs.len()),
                    "capture at most 32 expressions",
                ));
            }
            for (i, e) in exprs.iter().enumerate() {
                check_identifier(
                    &mut errors,
                    at,
                    &format!("spec.capture.{list}[{i}].name"),
                    &e.name,
                );
                if e.expr.trim().is_empty() || e.expr.len() > 256 {
                    errors.push(invalid(at, &format!("spec.capture.{list}[{i}].expr"), format!("{:?}", e.expr), "expr must not be empty: write an argument (req.ID), a result ($1) or len(x)"));
                }
            }
        }
    }
    if spec.metrics.len() > 16 {
        errors.push(invalid(
            at,
            "spec.metrics",
            format!("a list of {}", spec.metrics.len()),
            "define at most 16 metrics",
        ));
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        check_identifier(&mut errors, at, &format!("spec.metrics[{i}].name"), &m.name);
        if m.labels.len() > 8 {
            errors.push(invalid(
                at,
                &format!("spec.metrics[{i}].labels"),
                format!("a list of {}", m.labels.len()),
                "use at most 8 low-cardinality label columns",
            ));
        }
    }
    errors
}

fn check_bpftrace(at: &Location, spec: &BpftraceScriptSpec) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    check_process(&mut errors, at, spec.process.as_ref(), false);
    if let Some(pods) = &spec.pods {
        // Ignoring it would run the script's uprobes on every process of the machine instead.
        errors.push(invalid(
            at,
            "spec.pods",
            format!("namespace {:?}", pods.namespace),
            "standalone mode has no pods to select: leave spec.pods out (uprobe paths then resolve on this machine) or add spec.process with exe or cmdline",
        ));
    }
    if spec.program.trim().is_empty() {
        errors.push(invalid(at, "spec.program", "empty", "spec.program must contain a bpftrace program, e.g. tracepoint:syscalls:sys_enter_openat { @opens[comm] = count(); }"));
    }
    if spec.program.len() > 65536 {
        errors.push(invalid(
            at,
            "spec.program",
            format!("{} bytes long", spec.program.len()),
            "keep the program within 65536 bytes",
        ));
    }
    if let Some(t) = &spec.table_name {
        check_identifier(&mut errors, at, "spec.tableName", t);
    }
    errors
}

/// A stable hash of the spec, standing in for `metadata.generation`: it changes exactly when the
/// spec does. FNV-1a, hand-written (six lines) because it must not change between Rust releases.
fn spec_generation(config: &ProbeConfig) -> i64 {
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // Positive and non-zero, like a real generation.
    ((h >> 1) as i64).max(1)
}

/// How often files are re-read even without change notifications.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Quiet time after a change notification before reloading (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Reads `path`, applies its probes, and keeps doing so as files change and ttls pass.
/// `applied` becomes true once the first desired state was applied.
pub async fn run(
    path: PathBuf,
    manager: ManagerHandle,
    telemetry: Telemetry,
    errors_out: watch::Sender<Vec<ManifestErrorReport>>,
    applied: watch::Sender<bool>,
) {
    let (tx, mut changed) = mpsc::channel::<()>(1);
    let _watcher = watch_files(&path, tx);
    let mut first_seen: HashMap<(String, i64), Instant> = HashMap::new();
    let mut last_desired: Option<Vec<AssignedProbe>> = None;
    let mut last_errors: Vec<String> = Vec::new();
    let mut expired_logged: BTreeMap<String, i64> = BTreeMap::new();
    let mut last_good = LastGood::default();
    let reload = |last_good: &mut LastGood| {
        let mut loaded = load(&path);
        last_good.keep(&mut loaded);
        loaded
    };
    let mut loaded = reload(&mut last_good);
    if loaded.probes.is_empty() && loaded.errors.is_empty() {
        warn!(
            "no resources found in {}: add *.yaml or *.yml files of {KINDS} resources (see examples/); new files are picked up as they come",
            path.display()
        );
    }
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Report problems when they change.
        let reports = loaded.reports();
        let messages: Vec<String> = reports.iter().map(|r| r.message.clone()).collect();
        if messages != last_errors {
            for r in &reports {
                if !last_errors.contains(&r.message) {
                    warn!(file = %r.file, "{}", r.message);
                    telemetry.manifest_errors.inc();
                }
            }
            errors_out.send_replace(reports);
            last_errors = messages;
        }
        // Desired = every probe whose ttl has not passed since its spec was first loaded.
        let now = Instant::now();
        let mut desired = Vec::new();
        for local in &loaded.probes {
            let key = (local.probe.owner.uid.clone(), local.probe.owner.generation);
            let since = *first_seen.entry(key).or_insert(now);
            match local.ttl {
                Some(ttl) if now.duration_since(since) >= ttl => {
                    if expired_logged.insert(local.probe.id.clone(), local.probe.owner.generation)
                        != Some(local.probe.owner.generation)
                    {
                        info!(probe = %local.probe.id, ttl = ?ttl, "ttl passed; probe removed (change its spec or restart the agent to run it again)");
                    }
                }
                _ => desired.push(local.probe.clone()),
            }
        }
        if last_desired.as_ref() != Some(&desired) {
            info!(probes = desired.len(), "applying manifests");
            manager.apply(desired.clone()).await;
            last_desired = Some(desired);
            applied.send_replace(true);
        }
        tokio::select! {
            Some(()) = changed.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while changed.try_recv().is_ok() {}
                loaded = reload(&mut last_good);
            }
            _ = poll.tick() => loaded = reload(&mut last_good),
            _ = tick.tick() => {}
        }
    }
}

/// Watches `path` (a directory, or a file's directory, since editors replace files by renaming).
/// None when notifications are unavailable; polling still picks up changes.
fn watch_files(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // Full channel = a reload is already pending.
            let _ = tx.try_send(());
        }
    });
    match watcher.and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch manifests for changes; polling every {}s instead", POLL_EVERY.as_secs());
            None
        }
    }
}

#[cfg(test)]
mod tests;
