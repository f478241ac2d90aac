use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sonde_api::{NodeCapabilities, ProbeState, ProbeStatus};
use tower::ServiceExt;

use super::*;
use crate::tables::{Budget, Column, ColumnType, Row, Value};

struct Fixture {
    router: Router,
    caps: watch::Sender<Option<NodeCapabilities>>,
    applied: watch::Sender<bool>,
    _probes: watch::Sender<Vec<ProbeStatus>>,
    _errors: watch::Sender<Vec<ManifestErrorReport>>,
}

fn fixture() -> Fixture {
    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry, "node-a", "standalone");
    let store = Store::new("node-a".into(), Budget::default(), telemetry.tables.clone());
    let w = store
        .create(
            "opens",
            "BpftraceScript/opens",
            vec![Column::new("comm", ColumnType::String)],
        )
        .unwrap();
    for t in 1..=3 {
        w.append(Row {
            time_ns: t,
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            pid: 7,
            values: vec![Value::String(format!("c{t}"))],
        });
    }
    let (caps, caps_rx) = watch::channel(None);
    let (applied, applied_rx) = watch::channel(false);
    let (probes, probes_rx) = watch::channel(vec![ProbeStatus {
        id: "BpftraceScript/opens".into(),
        owner_uid: "local:/m.yaml#opens".into(),
        generation: 3,
        state: ProbeState::Attached,
        message: String::new(),
        targets_attached: 1,
        restarts: 0,
    }]);
    let (errors, errors_rx) = watch::channel(vec![ManifestErrorReport {
        file: "/m/bad.yaml".into(),
        document: Some(1),
        message: "bad".into(),
    }]);
    let state = AppState {
        node: "node-a".into(),
        mode: Mode::Standalone,
        store,
        registry,
        telemetry,
        capabilities: caps_rx,
        probes: probes_rx,
        manifest_errors: errors_rx,
        applied: applied_rx,
        auth: None,
    };
    Fixture {
        router: router(state),
        caps,
        applied,
        _probes: probes,
        _errors: errors,
    }
}

async fn get(router: &Router, uri: &str) -> (StatusCode, String, String) {
    let res = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, ct, body)
}

#[tokio::test]
async fn readyz_waits_for_capabilities_and_the_first_applied_state() {
    let f = fixture();
    assert_eq!(get(&f.router, "/healthz").await.0, StatusCode::OK);
    let (code, _, body) = get(&f.router, "/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("capabilities") && body.contains("manifests"),
        "{body}"
    );
    f.caps.send_replace(Some(NodeCapabilities::default()));
    f.applied.send_replace(true);
    assert_eq!(get(&f.router, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn status_shows_node_mode_probes_and_manifest_errors() {
    let f = fixture();
    let (code, _, body) = get(&f.router, "/v1/status").await;
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["mode"], "standalone");
    assert_eq!(v["probes"][0]["kind"], "BpftraceScript");
    assert_eq!(v["probes"][0]["state"], "Attached");
    assert_eq!(v["probes"][0]["targetsAttached"], 1);
    assert_eq!(v["manifestErrors"][0]["file"], "/m/bad.yaml");
}

#[tokio::test]
async fn tables_are_listed_with_columns_and_counts() {
    let f = fixture();
    let (_, _, body) = get(&f.router, "/v1/tables").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["name"], "opens");
    assert_eq!(v[0]["rows"], 3);
    assert_eq!(v[0]["evictedRows"], 0);
    assert_eq!(
        v[0]["columns"][0],
        serde_json::json!({"name": "time_", "type": "time"})
    );
    assert_eq!(
        v[0]["columns"][6],
        serde_json::json!({"name": "comm", "type": "string"})
    );
}

#[tokio::test]
async fn table_rows_come_in_each_format_newest_n_oldest_first() {
    let f = fixture();
    let (code, ct, body) = get(&f.router, "/v1/tables/opens?limit=2").await;
    assert_eq!((code, ct.as_str()), (StatusCode::OK, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["time_"], 2);
    assert_eq!(v[1]["comm"], "c3");
    let (_, ct, body) = get(&f.router, "/v1/tables/opens?format=csv&since=3").await;
    assert!(ct.starts_with("text/csv"));
    assert_eq!(
        body,
        "time_,node,namespace,pod,container,pid,comm\n3,node-a,,,,7,c3\n"
    );
    let (_, _, body) = get(&f.router, "/v1/tables/opens?format=ndjson").await;
    assert_eq!(body.lines().count(), 3);
}

#[tokio::test]
async fn bad_parameters_get_400_naming_parameter_and_value() {
    let f = fixture();
    for (uri, want) in [
        ("/v1/tables/opens?limit=abc", "limit=abc"),
        ("/v1/tables/opens?since=soon", "since=soon"),
        ("/v1/tables/opens?format=xml", "format=xml"),
    ] {
        let (code, _, body) = get(&f.router, uri).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}");
        assert!(body.contains(want), "{uri}: {body}");
    }
}

#[tokio::test]
async fn unknown_tables_get_404_saying_how_to_list_tables() {
    let f = fixture();
    let (code, _, body) = get(&f.router, "/v1/tables/nope").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("/v1/tables"), "{body}");
}

#[tokio::test]
async fn metrics_are_openmetrics_and_count_requests_by_route_template() {
    let f = fixture();
    get(&f.router, "/v1/tables/opens").await;
    get(&f.router, "/no/such/path").await;
    let (code, ct, body) = get(&f.router, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.contains(r#"sonde_agent_info{version="#), "{body}");
    assert!(
        body.contains(r#"sonde_table_rows{table="opens"} 3"#),
        "{body}"
    );
    assert!(
        body.contains(r#"sonde_http_requests_total{route="/v1/tables/{name}",code="200"} 1"#),
        "{body}"
    );
    assert!(body.contains(r#"route="other",code="404""#), "{body}");
    assert!(body.ends_with("# EOF\n"));
}
