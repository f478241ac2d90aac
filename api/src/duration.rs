//! Go-style durations (`90s`, `30m`, `1h30m`, `1.5h`) as used by `spec.ttl`.
//!
//! Written by hand because the CRD accepts exactly the Go syntax (what `kubectl` users know) and
//! humantime's grammar differs (it wants spaces, accepts words); this is twenty lines.
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{value}` is not a duration: {reason}; write it like 90s, 30m or 1h30m (units: ns, us, ms, s, m, h)"
)]
pub struct DurationError {
    pub value: String,
    pub reason: &'static str,
}

/// Parses a Go-style duration.
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = 0f64;
    let mut rest = value;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("a number has no unit"))?;
        if num_len == 0 {
            return Err(err("a unit has no number before it"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| err("a number is malformed"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err("unknown unit")),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err("it is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_to_their_length() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn malformed_durations_name_the_value() {
        let e = parse("30 minutes").unwrap_err();
        assert!(e.to_string().contains("`30 minutes`"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("10").is_err());
        assert!(parse("m").is_err());
        assert!(parse("5d").is_err());
    }
}
