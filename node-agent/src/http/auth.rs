//! Bearer-token checks for `/v1/*` in a cluster, the way the kubelet authorizes `nodes/proxy`:
//! TokenReview authenticates the token, then SubjectAccessReview asks whether that user may
//! `get nodes/proxy` on this node. Decisions are cached for [`CACHE_FOR`], keyed by a keyed hash of
//! the token (the token itself is never stored).
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
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

    async fn decide(&self, token: &str) -> Result<Decision, AuthError> {
        let key = self.keys.hash_one(token);
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, d)) = cache.get(&key)
                && now.duration_since(*at) < CACHE_FOR
            {
                return Ok(d.clone());
            }
        }
        let decision = self.review(token).await?;
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

    async fn review(&self, token: &str) -> Result<Decision, AuthError> {
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
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("get".into()),
                    group: Some(String::new()),
                    resource: Some("nodes".into()),
                    subresource: Some("proxy".into()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
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
        if sar.status.is_some_and(|s| s.allowed) {
            Ok(Decision::Allowed)
        } else {
            Ok(Decision::Forbidden(format!(
                "{username} may not get nodes/proxy on node {}; grant it `get` on resource nodes/proxy (RBAC)",
                self.node
            )))
        }
    }
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
    match auth.decide(token).await {
        Ok(Decision::Allowed) => next.run(req).await,
        Ok(Decision::Unauthenticated(m)) => error(StatusCode::UNAUTHORIZED, m),
        Ok(Decision::Forbidden(m)) => error(StatusCode::FORBIDDEN, m),
        Err(e) => {
            warn!(error = %e, "cannot check a bearer token");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
