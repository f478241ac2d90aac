//! `spec.ttl`: when a resource stops being assigned, counted from `metadata.creationTimestamp`.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sonde_api::duration::{self, DurationError};

#[derive(Debug, thiserror::Error)]
pub enum TtlError {
    #[error("spec.ttl: {0}")]
    Invalid(#[from] DurationError),
    #[error("spec.ttl `{ttl}` added to the creation time is out of range; use a shorter ttl")]
    OutOfRange { ttl: String },
}

/// When a resource created at `created` with `ttl` expires; `None` without a ttl (or before the API
/// server has set the creation time).
pub fn expires_at(
    created: Option<&Time>,
    ttl: Option<&str>,
) -> Result<Option<Timestamp>, TtlError> {
    let (Some(created), Some(ttl)) = (created, ttl) else {
        return Ok(None);
    };
    let length = duration::parse(ttl)?;
    let out_of_range = || TtlError::OutOfRange {
        ttl: ttl.to_owned(),
    };
    let length = SignedDuration::try_from(length).map_err(|_| out_of_range())?;
    created
        .0
        .checked_add(length)
        .map(Some)
        .map_err(|_| out_of_range())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_creation_plus_ttl() {
        let created = Time("2025-01-01T00:00:00Z".parse().unwrap());
        let at = expires_at(Some(&created), Some("1h30m")).unwrap();
        assert_eq!(at, Some("2025-01-01T01:30:00Z".parse().unwrap()));
        assert_eq!(expires_at(Some(&created), None).unwrap(), None);
    }

    #[test]
    fn a_malformed_ttl_is_an_error_naming_the_value() {
        let created = Time("2025-01-01T00:00:00Z".parse().unwrap());
        let err = expires_at(Some(&created), Some("5 days")).unwrap_err();
        assert!(err.to_string().contains("5 days"), "{err}");
    }
}
