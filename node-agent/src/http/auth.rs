//! Bearer-token checks in a cluster, as the kubelet and kube-rbac-proxy do them: TokenReview
//! authenticates the token, then SubjectAccessReviews ask whether that user may read what it asks.
//!
//! - `/v1/*` (Sonde's data): `get` on the resource `tables` of API group `sonde.dev` (no such objects
//!   exist: RBAC rules name it all the same) cluster-wide, or `get nodes/proxy` on this node as the
//!   kubelet asks, for everything; or `get tables.sonde.dev` in one namespace, for the rows of that
//!   namespace only (a row query naming it with `?namespace=`).
//! - `/metrics` (RED series carry pods, routes and error types of captured traffic): `get` on the
//!   non-resource URL `/metrics`, what Prometheus's usual RBAC grants (`nonResourceURLs: [/metrics]`).
//!
//! Decisions are cached for [`CACHE_FOR`], keyed by a keyed hash of the token and what it asks for
//! (the token itself is never stored). Refusals are logged at most once per user per [`LOG_EVERY`],
//! not once per scrape.
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tracing::warn;

use super::Shared;
use super::handlers::error;

pub const CACHE_FOR: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 1024;
/// A user (or a caller without a valid token) denied again within this is not logged again.
pub const LOG_EVERY: Duration = Duration::from_secs(300);

/// The non-resource URL whose `get` grants `/metrics`.
pub const METRICS_PATH: &str = "/metrics";

/// What a request asks to read; part of the cache key, so a token allowed one is never let into
/// the other.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Ask {
    /// `/v1/*`: this node's data, or only the rows of one namespace.
    Data { namespace: Option<String> },
    /// `/metrics`.
    Metrics,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Allowed,
    /// 401, with the reason.
    Unauthenticated(String),
    /// 403: the authenticated user and the reason.
    Forbidden {
        user: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "cannot create a {review}: {source}; the agent needs RBAC to create tokenreviews and subjectaccessreviews"
    )]
    Review {
        review: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Checks tokens against the API server for one node.
pub struct Authorizer {
    client: kube::Client,
    node: String,
    keys: RandomState,
    cache: Mutex<HashMap<u64, (Instant, Decision)>>,
    denials: DenialLog,
}

impl Authorizer {
    pub fn new(client: kube::Client, node: String) -> Authorizer {
        Authorizer {
            client,
            node,
            keys: RandomState::new(),
            cache: Mutex::new(HashMap::new()),
            denials: DenialLog::default(),
        }
    }

    async fn decide(&self, token: &str, ask: &Ask) -> Result<Decision, AuthError> {
        let key = self.keys.hash_one((token, ask));
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, d)) = cache.get(&key)
                && now.duration_since(*at) < CACHE_FOR
            {
                return Ok(d.clone());
            }
        }
        let decision = self.review(token, ask).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| now.duration_since(*at) < CACHE_FOR);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (now, decision.clone()));
        Ok(decision)
    }

    async fn review(&self, token: &str, ask: &Ask) -> Result<Decision, AuthError> {
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        let tr = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &tr)
            .await
            .map_err(|source| AuthError::Review {
                review: "TokenReview",
                source,
            })?;
        let status = tr.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into());
            return Ok(Decision::Unauthenticated(format!(
                "the API server refused the bearer token: {why}; send a valid ServiceAccount or user token (e.g. from kubectl create token)"
            )));
        };
        let username = user.username.clone().unwrap_or_default();
        let message = match ask {
            Ask::Data { namespace } => {
                if self.allows_data(&user, namespace.as_deref()).await? {
                    return Ok(Decision::Allowed);
                }
                data_forbidden(&username, namespace.as_deref())
            }
            Ask::Metrics => {
                let attributes = NonResourceAttributes {
                    path: Some(METRICS_PATH.into()),
                    verb: Some("get".into()),
                };
                if self
                    .allows(&user, Attributes::NonResource(attributes))
                    .await?
                {
                    return Ok(Decision::Allowed);
                }
                metrics_forbidden(&username)
            }
        };
        Ok(Decision::Forbidden {
            user: username,
            message,
        })
    }

    /// `get tables.sonde.dev` cluster-wide, `get nodes/proxy` on this node, or `get
    /// tables.sonde.dev` in the namespace asked for.
    async fn allows_data(
        &self,
        user: &UserInfo,
        namespace: Option<&str>,
    ) -> Result<bool, AuthError> {
        let tables = |namespace: Option<&str>| ResourceAttributes {
            verb: Some("get".into()),
            group: Some(sonde_api::GROUP.into()),
            resource: Some(TABLES.into()),
            namespace: namespace.map(str::to_owned),
            ..Default::default()
        };
        let node_proxy = ResourceAttributes {
            verb: Some("get".into()),
            group: Some(String::new()),
            resource: Some("nodes".into()),
            subresource: Some("proxy".into()),
            name: Some(self.node.clone()),
            ..Default::default()
        };
        let mut asks = vec![tables(None), node_proxy];
        asks.extend(namespace.map(|ns| tables(Some(ns))));
        for attributes in asks {
            if self.allows(user, Attributes::Resource(attributes)).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One SubjectAccessReview for `user`.
    async fn allows(&self, user: &UserInfo, attributes: Attributes) -> Result<bool, AuthError> {
        let (resource_attributes, non_resource_attributes) = match attributes {
            Attributes::Resource(r) => (Some(r), None),
            Attributes::NonResource(n) => (None, Some(n)),
        };
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes,
                non_resource_attributes,
            },
            ..Default::default()
        };
        let sar = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|source| AuthError::Review {
                review: "SubjectAccessReview",
                source,
            })?;
        Ok(sar.status.is_some_and(|s| s.allowed))
    }
}

/// What one SubjectAccessReview asks: exactly one of the two kinds.
#[expect(
    clippy::large_enum_variant,
    reason = "made for one review and moved into it, never stored"
)]
enum Attributes {
    Resource(ResourceAttributes),
    NonResource(NonResourceAttributes),
}

fn data_forbidden(username: &str, namespace: Option<&str>) -> String {
    let asked = namespace.map_or_else(
        || "this node's data".to_owned(),
        |ns| format!("the rows of namespace {ns}"),
    );
    format!(
        "{username} may not read {asked}: grant it `get` on resource `{TABLES}` of API group {group} \
         cluster-wide to read everything (the chart's <release>-data-reader ClusterRole), or in a \
         namespace (a Role) to read that namespace's rows with ?namespace=<ns> on \
         /v1/tables/<name> and /v1/profiles/*",
        group = sonde_api::GROUP,
    )
}

fn metrics_forbidden(username: &str) -> String {
    format!(
        "{username} may not get {METRICS_PATH}: bind it to the chart's <release>-metrics-reader \
         ClusterRole (nonResourceURLs [{METRICS_PATH}], verbs [get]; for a ServiceAccount: kubectl \
         create clusterrolebinding NAME --clusterrole=<release>-metrics-reader \
         --serviceaccount=NAMESPACE:NAME), or run the agent with --metrics-auth=false (chart value \
         agent.metricsAuthorization=false) to leave {METRICS_PATH} open"
    )
}

const METRICS_NO_TOKEN: &str = "missing bearer token: /metrics needs Authorization: Bearer <token> \
    of a user allowed to get the non-resource URL /metrics (the chart's <release>-metrics-reader \
    ClusterRole); Prometheus sends its ServiceAccount's token with `authorization: {credentials_file: \
    /var/run/secrets/kubernetes.io/serviceaccount/token}` (prometheus-operator: `bearerTokenFile`), \
    or run the agent with --metrics-auth=false (chart value agent.metricsAuthorization=false)";

const DATA_NO_TOKEN: &str =
    "missing bearer token: send Authorization: Bearer <token> (e.g. from kubectl create token)";

/// When each refused caller (a user; all callers without a valid token; all whose token could not
/// be checked — for metrics or for data) was last logged, so a scraper without the role logs once
/// per [`LOG_EVERY`], not at every scrape.
#[derive(Default)]
pub(super) struct DenialLog {
    last: Mutex<HashMap<String, Instant>>,
}

impl DenialLog {
    /// Whether a denial of `who` at `now` is to be logged (and if so, remembers it).
    pub(super) fn should_log(&self, who: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last
            .get(who)
            .is_some_and(|at| now.saturating_duration_since(*at) < LOG_EVERY)
        {
            return false;
        }
        if last.len() >= CACHE_MAX {
            last.retain(|_, at| now.saturating_duration_since(*at) < LOG_EVERY);
            if last.len() >= CACHE_MAX {
                // Many distinct users denied at once: forget them rather than grow.
                last.clear();
            }
        }
        last.insert(who.to_owned(), now);
        true
    }
}

/// The resource of API group `sonde.dev` whose `get` grants reading tables and profiles.
pub const TABLES: &str = "tables";

/// The namespace a row query asks for (`/v1/tables/<name>` or `/v1/profiles/*` with
/// `?namespace=`): a grant in that namespace is enough for it, as the handlers return only its rows.
fn requested_namespace(req: &Request) -> Option<String> {
    let path = req.uri().path();
    let rows = path.starts_with("/v1/tables/") || path.starts_with("/v1/profiles/");
    if !rows {
        return None;
    }
    let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(req.uri()).ok()?;
    params.remove("namespace").filter(|ns| !ns.is_empty())
}

/// Middleware on `/v1/*`: passes through in standalone mode, else demands an authorized token.
pub(super) async fn require_token(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(req).await;
    };
    let ask = Ask::Data {
        namespace: requested_namespace(&req),
    };
    authorize(auth, ask, req, next).await
}

/// Middleware on `/metrics`: passes through in standalone mode or with `--metrics-auth=false`,
/// else demands a token allowed to get `/metrics`.
pub(super) async fn require_metrics_token(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.auth.as_ref().filter(|_| state.metrics_auth) else {
        return next.run(req).await;
    };
    authorize(auth, Ask::Metrics, req, next).await
}

async fn authorize(auth: &Authorizer, ask: Ask, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let path = req.uri().path().to_owned();
    let (who, code, message) = match token {
        None => {
            let message = match ask {
                Ask::Metrics => METRICS_NO_TOKEN,
                Ask::Data { .. } => DATA_NO_TOKEN,
            };
            (
                "(no token)".to_owned(),
                StatusCode::UNAUTHORIZED,
                message.to_owned(),
            )
        }
        Some(token) => match auth.decide(token, &ask).await {
            Ok(Decision::Allowed) => return next.run(req).await,
            Ok(Decision::Unauthenticated(m)) => {
                ("(invalid token)".to_owned(), StatusCode::UNAUTHORIZED, m)
            }
            Ok(Decision::Forbidden { user, message }) => (user, StatusCode::FORBIDDEN, message),
            // The API server down or the agent's RBAC missing: logged as rarely as denials,
            // not once per scrape.
            Err(e) => (
                "(review failed)".to_owned(),
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check a bearer token: {e}"),
            ),
        },
    };
    let kind = match ask {
        Ask::Metrics => "metrics",
        Ask::Data { .. } => "data",
    };
    if auth
        .denials
        .should_log(&format!("{who} {kind}"), Instant::now())
    {
        warn!(
            user = %who,
            path = %path,
            code = code.as_u16(),
            "request refused (logged once per caller every {} s): {message}",
            LOG_EVERY.as_secs()
        );
    }
    error(code, message)
}
