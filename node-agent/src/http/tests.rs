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
    fixture_with(None, true)
}

fn fixture_with(auth: Option<Authorizer>, metrics_auth: bool) -> Fixture {
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
        auth,
        metrics_auth,
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
    get_as(router, uri, None).await
}

async fn get_as(router: &Router, uri: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
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

// ---- authorization in a cluster ----

/// A Prometheus ServiceAccount's token, allowed to get the non-resource URL /metrics.
const SCRAPER: &str = "scraper-token";
/// A token of a user allowed `get tables.sonde.dev` cluster-wide (the data-reader role).
const READER: &str = "reader-token";
/// A token of an authenticated user allowed nothing.
const OUTSIDER: &str = "outsider-token";
/// A token whose TokenReview the API server refuses, as when the agent lacks its RBAC.
const NO_RBAC: &str = "no-rbac-token";

/// The SubjectAccessReview specs the fake API server was asked.
type Asked = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A kube client whose API server answers TokenReviews and SubjectAccessReviews as RBAC would for
/// [`SCRAPER`], [`READER`] and [`OUTSIDER`] (any other token is not authenticated).
fn fake_api_server() -> (kube::Client, Asked) {
    let asked: Asked = Arc::default();
    let seen = asked.clone();
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let seen = seen.clone();
        async move {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let spec = &review["spec"];
            if spec["token"] == NO_RBAC {
                // What the API server answers an agent whose ServiceAccount lacks the RBAC.
                let status = serde_json::json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403,
                    "reason": "Forbidden", "message": "tokenreviews.authentication.k8s.io is forbidden",
                });
                let body = kube::client::Body::from(serde_json::to_vec(&status).unwrap());
                let mut res = axum::http::Response::new(body);
                *res.status_mut() = StatusCode::FORBIDDEN;
                return Ok::<_, std::convert::Infallible>(res);
            }
            let answer = if path.ends_with("/tokenreviews") {
                let user = match spec["token"].as_str() {
                    Some(SCRAPER) => Some("system:serviceaccount:monitoring:prometheus"),
                    Some(READER) => Some("system:serviceaccount:team:reader"),
                    Some(OUTSIDER) => Some("system:serviceaccount:team:outsider"),
                    _ => None,
                };
                serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "status": match user {
                        Some(u) => serde_json::json!({"authenticated": true, "user": {"username": u}}),
                        None => serde_json::json!({"authenticated": false, "error": "invalid token"}),
                    },
                })
            } else {
                seen.lock().unwrap().push(spec.clone());
                let user = spec["user"].as_str().unwrap_or_default();
                let metrics = serde_json::json!({"path": "/metrics", "verb": "get"});
                let tables =
                    serde_json::json!({"group": "sonde.dev", "resource": "tables", "verb": "get"});
                let allowed = (user.ends_with(":prometheus")
                    && spec["nonResourceAttributes"] == metrics
                    && spec.get("resourceAttributes").is_none())
                    || (user.ends_with(":reader") && spec["resourceAttributes"] == tables);
                serde_json::json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "status": {"allowed": allowed},
                })
            };
            let body = kube::client::Body::from(serde_json::to_vec(&answer).unwrap());
            Ok(axum::http::Response::new(body))
        }
    });
    (kube::Client::new(service, "default"), asked)
}

fn cluster_fixture(metrics_auth: bool) -> (Fixture, Asked) {
    let (client, asked) = fake_api_server();
    let f = fixture_with(Some(Authorizer::new(client, "node-a".into())), metrics_auth);
    (f, asked)
}

#[tokio::test]
async fn metrics_in_a_cluster_need_a_token_allowed_to_get_the_metrics_url() {
    let (f, asked) = cluster_fixture(true);
    let (code, _, body) = get(&f.router, "/metrics").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body.contains("metrics-reader") && body.contains("credentials_file"),
        "{body}"
    );
    let (code, _, body) = get_as(&f.router, "/metrics", Some("forged")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    for token in [OUTSIDER, READER] {
        let (code, _, body) = get_as(&f.router, "/metrics", Some(token)).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{token}: {body}");
        assert!(
            body.contains("<release>-metrics-reader") && body.contains("--metrics-auth=false"),
            "{body}"
        );
    }
    let (code, _, body) = get_as(&f.router, "/metrics", Some(SCRAPER)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("sonde_agent_info"), "{body}");
    let asked = asked.lock().unwrap();
    assert!(
        asked.iter().any(
            |spec| spec["user"] == "system:serviceaccount:monitoring:prometheus"
                && spec["nonResourceAttributes"]
                    == serde_json::json!({"path": "/metrics", "verb": "get"})
        ),
        "no non-resource review of /metrics: {asked:?}"
    );
}

#[tokio::test]
async fn a_token_allowed_metrics_reads_no_tables() {
    let (f, _) = cluster_fixture(true);
    assert_eq!(
        get_as(&f.router, "/metrics", Some(SCRAPER)).await.0,
        StatusCode::OK
    );
    // A cached /metrics decision for the same token must not let it into /v1.
    let (code, _, body) = get_as(&f.router, "/v1/tables", Some(SCRAPER)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        get_as(&f.router, "/v1/tables", Some(READER)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn health_checks_stay_open_in_a_cluster() {
    let (f, _) = cluster_fixture(true);
    assert_eq!(get(&f.router, "/healthz").await.0, StatusCode::OK);
    // Not ready yet, but answered without a token.
    assert_eq!(
        get(&f.router, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn metrics_stay_open_in_a_cluster_with_metrics_auth_off_and_data_does_not() {
    let (f, asked) = cluster_fixture(false);
    let (code, _, body) = get(&f.router, "/metrics").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        get(&f.router, "/v1/tables").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_token_that_cannot_be_checked_gets_503_naming_the_missing_rbac() {
    let (f, _) = cluster_fixture(true);
    let (code, _, body) = get_as(&f.router, "/metrics", Some(NO_RBAC)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("tokenreviews"), "{body}");
}

#[test]
fn denials_are_logged_once_per_user_and_kind_every_few_minutes() {
    let log = auth::DenialLog::default();
    let t0 = std::time::Instant::now();
    let later = |s| t0 + std::time::Duration::from_secs(s);
    assert!(log.should_log("alice metrics", t0));
    // Every 15 s scrape until the interval has passed: no new line.
    for s in (15..auth::LOG_EVERY.as_secs()).step_by(15) {
        assert!(
            !log.should_log("alice metrics", later(s)),
            "logged again at {s} s"
        );
    }
    assert!(log.should_log("bob metrics", later(1)));
    assert!(log.should_log("alice data", later(1)));
    assert!(log.should_log("alice metrics", later(auth::LOG_EVERY.as_secs())));
}
