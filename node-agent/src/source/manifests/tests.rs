use super::*;

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"
apiVersion: sonde.dev/v1alpha1
kind: BpftraceScript
metadata:
  name: opens
spec:
  program: 'tracepoint:syscalls:sys_enter_openat { printf("comm:%s\n", comm); }'
  ttl: 10m
---
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: web
spec:
  process:
    exe: "*/nginx"
  probe:
    protocols: [http]
"#;

fn only_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.yaml", text);
    let loaded = load(dir.path());
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    loaded.errors[0].to_string()
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{p:?} missing from: {msg}");
    }
}

#[test]
fn every_document_of_every_yaml_file_becomes_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a.yaml", GOOD);
    write(dir.path(), "notes.txt", "not a manifest");
    let loaded = load(dir.path());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let ids: Vec<&str> = loaded.probes.iter().map(|p| p.probe.id.as_str()).collect();
    assert_eq!(ids, ["BpftraceScript/opens", "Tracepoint/default/web"]);
    let opens = &loaded.probes[0];
    assert_eq!(opens.ttl, Some(Duration::from_secs(600)));
    assert_eq!(
        opens.probe.owner.uid,
        format!("local:{}#opens", file.display())
    );
    assert_eq!(opens.probe.owner.namespace, None);
    assert!(opens.probe.owner.generation > 0);
    assert_eq!(
        loaded.probes[1]
            .probe
            .process
            .as_ref()
            .unwrap()
            .exe
            .as_deref(),
        Some("*/nginx")
    );
}

#[test]
fn the_generation_changes_exactly_when_the_spec_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a.yaml", GOOD);
    let first = load(&file).probes[0].probe.owner.generation;
    assert_eq!(load(&file).probes[0].probe.owner.generation, first);
    write(dir.path(), "a.yaml", &GOOD.replace("10m", "20m"));
    assert_ne!(load(&file).probes[0].probe.owner.generation, first);
}

#[test]
fn an_unknown_spec_field_names_the_file_document_resource_and_field() {
    let msg = only_error(&format!(
        "{GOOD}---\napiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {{name: x}}\nspec:\n  program: x\n  prgram: y\n"
    ));
    assert_mentions(&msg, &["bad.yaml document 3", "BpftraceScript x", "prgram"]);
}

#[test]
fn a_nested_type_error_names_the_field_path() {
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {name: t}\nspec:\n  process: {exe: a}\n  probe:\n    protocols: [smtp]\n",
    );
    assert_mentions(
        &msg,
        &["document 1", "Tracepoint t", "spec.probe.protocols", "smtp"],
    );
}

#[test]
fn standalone_tracepoints_need_a_process_selector() {
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {name: t}\nspec:\n  selector: {matchLabels: {app: web}}\n  probe: {profiler: {}}\n",
    );
    assert_mentions(&msg, &["spec.process", "standalone", "exe", "cmdline"]);
}

#[test]
fn two_probe_kinds_at_once_are_rejected() {
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {name: t}\nspec:\n  process: {cmdline: nginx}\n  probe: {protocols: [http], profiler: {frequencyHz: 99}}\n",
    );
    assert_mentions(
        &msg,
        &["spec.probe", "exactly one of protocols or profiler"],
    );
}

#[test]
fn out_of_range_values_name_field_and_value() {
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {name: t}\nspec:\n  process: {cmdline: nginx}\n  probe: {profiler: {frequencyHz: 5000}}\n",
    );
    assert_mentions(
        &msg,
        &["spec.probe.profiler.frequencyHz is 5000", "1 to 1000"],
    );
}

#[test]
fn a_bad_ttl_names_the_value_and_the_accepted_syntax() {
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {name: s}\nspec: {program: 'BEGIN {}', ttl: 10 minutes}\n",
    );
    assert_mentions(&msg, &["spec.ttl is 10 minutes", "1h30m"]);
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {name: s}\nspec: {program: 'BEGIN {}', ttl: 0s}\n",
    );
    assert_mentions(&msg, &["spec.ttl is 0s", "above zero"]);
}

#[test]
fn empty_programs_bad_regexes_and_table_names_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "s.yaml",
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {name: s}\nspec:\n  program: '  '\n  tableName: Bad-Name\n  process: {cmdline: '(unclosed'}\n",
    );
    let msgs: Vec<String> = load(dir.path())
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_mentions(
        &msgs.join("\n"),
        &[
            "spec.program",
            "spec.tableName is \"Bad-Name\"",
            "spec.process.cmdline",
        ],
    );
}

#[test]
fn wrong_api_version_and_kind_say_what_to_use() {
    let msg = only_error(
        "apiVersion: v1\nkind: BpftraceScript\nmetadata: {name: s}\nspec: {program: x}\n",
    );
    assert_mentions(&msg, &["apiVersion is v1", "sonde.dev/v1alpha1"]);
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: NodeAssignment\nmetadata: {name: s}\nspec: {}\n",
    );
    assert_mentions(&msg, &["kind is NodeAssignment", "operator"]);
}

/// A directory shared with a cluster's manifests: other objects are not Sonde's, and no error; a
/// misspelled Sonde kind in Sonde's group still is one.
#[test]
fn objects_of_other_apis_are_skipped_and_sonde_s_group_is_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mixed.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{GOOD}"),
    );
    let loaded = load(dir.path());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.probes.len(), 2);
    let msg = only_error(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepont\nmetadata: {name: s}\nspec: {}\n",
    );
    assert_mentions(&msg, &["kind is Tracepont"]);
}

#[test]
fn yaml_syntax_errors_name_the_file_and_position() {
    let msg = only_error("apiVersion: [unclosed\n");
    assert_mentions(&msg, &["bad.yaml document 1", "not valid YAML", "line"]);
}

#[test]
fn a_duplicate_resource_points_at_its_first_definition() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", GOOD);
    write(dir.path(), "b.yaml", GOOD);
    let loaded = load(dir.path());
    assert_eq!(loaded.probes.len(), 2);
    let msg = loaded.errors[0].to_string();
    assert_mentions(
        &msg,
        &[
            "b.yaml document 1",
            "already defined at",
            "a.yaml document 1",
        ],
    );
}

/// Loads `dir` as the agent's reload loop does.
fn reload(dir: &Path, last_good: &mut LastGood) -> Loaded {
    let mut loaded = load(dir);
    last_good.keep(&mut loaded);
    loaded
}

fn ids(loaded: &Loaded) -> Vec<&str> {
    let mut ids: Vec<&str> = loaded.probes.iter().map(|p| p.probe.id.as_str()).collect();
    ids.sort();
    ids
}

#[test]
fn a_file_that_turns_bad_keeps_its_last_good_resources_until_fixed_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a.yaml", GOOD);
    write(
        dir.path(),
        "other.yaml",
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {name: other}\nspec: {program: 'BEGIN {}'}\n",
    );
    let mut last_good = LastGood::default();
    let good = reload(dir.path(), &mut last_good);
    let web = |l: &Loaded| {
        l.probes
            .iter()
            .find(|p| p.probe.id == "Tracepoint/default/web")
            .cloned()
    };
    let running_web = web(&good).unwrap();

    // A typo in one document: the old web keeps running, unchanged (no restart); the file's
    // valid document is applied as it is now.
    write(
        dir.path(),
        "a.yaml",
        &GOOD.replace("[http]", "[htp]").replace("10m", "20m"),
    );
    let bad = reload(dir.path(), &mut last_good);
    assert_eq!(
        ids(&bad),
        [
            "BpftraceScript/opens",
            "BpftraceScript/other",
            "Tracepoint/default/web"
        ]
    );
    assert_eq!(web(&bad), Some(running_web.clone()));
    let opens = bad
        .probes
        .iter()
        .find(|p| p.probe.id == "BpftraceScript/opens");
    assert_eq!(opens.and_then(|p| p.ttl), Some(Duration::from_secs(1200)));
    let reports = bad.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_mentions(
        &reports[0].message,
        &[
            "a.yaml document 2",
            "htp",
            "last good version keeps running (Tracepoint/default/web)",
        ],
    );

    // A YAML syntax error, a second reload: still the last good version.
    write(dir.path(), "a.yaml", "apiVersion: [unclosed\n");
    let broken = reload(dir.path(), &mut last_good);
    assert_eq!(broken.probes.len(), 3, "{:?}", ids(&broken));
    assert_eq!(web(&broken), Some(running_web));

    // Deleted: its resources go, the other file's stay.
    std::fs::remove_file(&file).unwrap();
    let deleted = reload(dir.path(), &mut last_good);
    assert_eq!(ids(&deleted), ["BpftraceScript/other"]);
    assert!(deleted.errors.is_empty(), "{:?}", deleted.errors);
    // The same when the agent was given the file itself.
    let single = dir.path().join("single.yaml");
    std::fs::write(&single, GOOD).unwrap();
    let mut single_good = LastGood::default();
    assert_eq!(reload(&single, &mut single_good).probes.len(), 2);
    std::fs::write(&single, "apiVersion: [unclosed\n").unwrap();
    assert_eq!(reload(&single, &mut single_good).probes.len(), 2);
    std::fs::remove_file(&single).unwrap();
    let gone = reload(&single, &mut single_good);
    assert!(gone.probes.is_empty(), "{:?}", ids(&gone));
    assert_mentions(&gone.reports()[0].message, &["single.yaml", "cannot read"]);
    // Back with the typo: no last good version to fall back on any more.
    write(dir.path(), "a.yaml", &GOOD.replace("[http]", "[htp]"));
    let again = reload(dir.path(), &mut last_good);
    assert_eq!(
        ids(&again),
        ["BpftraceScript/opens", "BpftraceScript/other"]
    );
}

#[test]
fn a_missing_path_is_reported_not_fatal() {
    let loaded = load(Path::new("/nonexistent/sonde.yaml"));
    assert_mentions(
        &loaded.errors[0].to_string(),
        &["/nonexistent/sonde.yaml", "--manifests"],
    );
}

#[test]
fn the_startup_check_names_a_missing_path_and_accepts_an_empty_directory() {
    let err = check(Path::new("/nonexistent/manifests")).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &["/nonexistent/manifests", "No such file", "--manifests"],
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(check(dir.path()).is_ok());
    assert!(check(&write(dir.path(), "a.yaml", GOOD)).is_ok());
}

fn examples(under: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(under)
}

/// What users start from: `scripts/run` applies examples/ as it is.
#[test]
fn the_standalone_examples_load_without_an_error() {
    let loaded = load(&examples(""));
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(files(&examples("")).unwrap().len(), loaded.probes.len());
}

/// The cluster examples select pods, which standalone mode has not: that is all it finds wrong
/// with them (each spec is checked as the agent checks what the operator assigns).
#[test]
fn the_cluster_examples_are_valid_but_for_their_pods() {
    let loaded = load(&examples("cluster"));
    assert!(loaded.probes.is_empty());
    // One resource per file but the namespaces' (skipped: not Sonde's).
    let documents = files(&examples("cluster")).unwrap().len() - 1;
    assert_eq!(loaded.errors.len(), documents, "{:#?}", loaded.errors);
    for e in &loaded.errors {
        assert_mentions(
            &e.to_string(),
            &["standalone mode has no pods", "spec.process"],
        );
    }
}
