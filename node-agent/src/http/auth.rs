//! Bearer-token checks for `/v1/*` in a cluster: TokenReview authenticates the token, then
//! SubjectAccessReviews ask whether that user may read Sonde's data — `get` on the resource
//! `tables` of API group `sonde.dev` (no such objects exist: RBAC rules name it all the same)
//! cluster-wide, or `get nodes/proxy` on this node as the kubelet asks, for everything; or `get
//! tables.sonde.dev` in one namespace, for the rows of that namespace only (a row query naming it
//! with `?namespace=`). Decisions are cached for [`CACHE_FOR`], keyed by a keyed hash of the token
//! and the namespace asked for (the token itself is never stored).
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
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tracing::warn;

use super::Shared;
use super::handlers::error;

pub const CACHE_FOR: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Allowed,
    /// 401, with the reason.
    Unauthenticated(String),
    /// 403, with the reason.
    Forbidden(String),
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
}

impl Authorizer {
    pub fn new(client: kube::Client, node: String) -> Authorizer {
        Authorizer {
            client,
            node,
            keys: RandomState::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn decide(&self, token: &str, namespace: Option<&str>) -> Result<Decision, AuthError> {
        let key = self.keys.hash_one((token, namespace));
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, d)) = cache.get(&key)
                && now.duration_since(*at) < CACHE_FOR
            {
                return Ok(d.clone());
            }
        }
        let decision = self.review(token, namespace).await?;
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

    async fn review(&self, token: &str, namespace: Option<&str>) -> Result<Decision, AuthError> {
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
                .unwrap_or_else(|| "the token was not accepted".into());
            return Ok(Decision::Unauthenticated(format!(
                "invalid bearer token ({why}); use a valid ServiceAccount or user token"
            )));
        };
        let username = user.username.clone().unwrap_or_default();
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
            if self.allows(&user, attributes).await? {
                return Ok(Decision::Allowed);
            }
        }
        let asked = namespace.map_or_else(
            || "this node's data".to_owned(),
            |ns| format!("the rows of namespace {ns}"),
        );
        Ok(Decision::Forbidden(format!(
            "{username} may not read {asked}: grant it `get` on resource `{TABLES}` of API group {group} \
             cluster-wide to read everything (the chart's <release>-data-reader ClusterRole), or in a \
             namespace (a Role) to read that namespace's rows with ?namespace=<ns> on \
             /v1/tables/<name> and /v1/profiles/*",
            group = sonde_api::GROUP,
        )))
    }

    /// One SubjectAccessReview for `user`.
    async fn allows(
        &self,
        user: &UserInfo,
        attributes: ResourceAttributes,
    ) -> Result<bool, AuthError> {
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(attributes),
                ..Default::default()
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
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send Authorization: Bearer <token> (e.g. from kubectl create token)",
        );
    };
    let namespace = requested_namespace(&req);
    match auth.decide(token, namespace.as_deref()).await {
        Ok(Decision::Allowed) => next.run(req).await,
        Ok(Decision::Unauthenticated(m)) => error(StatusCode::UNAUTHORIZED, m),
        Ok(Decision::Forbidden(m)) => error(StatusCode::FORBIDDEN, m),
        Err(e) => {
            warn!(error = %e, "cannot check a bearer token");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
