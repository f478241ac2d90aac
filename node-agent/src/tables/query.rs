//! Query parameters of `/v1/tables/{name}`: `limit`, `since` and `format`, with messages that name
//! the parameter, the value and what is accepted.
use super::Format;

/// Rows returned when no limit is given.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest accepted limit.
pub const MAX_LIMIT: usize = 100_000;

/// Which rows of a table to return: the newest `limit` at or after `since_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub limit: usize,
    pub since_ns: Option<i64>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            limit: DEFAULT_LIMIT,
            since_ns: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error(
        "limit={value} is not accepted: give a whole number from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"
    )]
    Limit { value: String },
    #[error(
        "since={value} is not accepted: give nanoseconds since the Unix epoch (e.g. 1767225600000000000) \
         or an RFC 3339 time (e.g. 2026-01-01T00:00:00Z)"
    )]
    Since { value: String },
    #[error("format={value} is not accepted: use json (default), ndjson or csv")]
    Format { value: String },
}

impl Query {
    /// Builds a query from the raw `limit`, `since` and `format` parameters.
    pub fn parse(
        limit: Option<&str>,
        since: Option<&str>,
        format: Option<&str>,
    ) -> Result<(Query, Format), QueryError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(QueryError::Limit {
                        value: v.to_owned(),
                    });
                }
            },
        };
        let since_ns = since.map(parse_since).transpose()?;
        let format = match format.unwrap_or("json") {
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "csv" => Format::Csv,
            other => {
                return Err(QueryError::Format {
                    value: other.to_owned(),
                });
            }
        };
        Ok((Query { limit, since_ns }, format))
    }
}

/// `since` as nanoseconds since the epoch: an integer, or an RFC 3339 time.
pub fn parse_since(value: &str) -> Result<i64, QueryError> {
    let v = value.trim();
    if let Ok(ns) = v.parse::<i64>() {
        return Ok(ns);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| QueryError::Since {
            value: value.to_owned(),
        })
}
