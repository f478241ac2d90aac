//! Values of the RED histograms' `error_type` label (OpenTelemetry's `error.type`): empty for an
//! operation that succeeded, else a short code from a bounded set, so that error rates can be read
//! per operation without the label's values growing with what servers send.

/// A failed operation whose error has no code this module knows.
pub const OTHER: &str = "_OTHER";

/// A request that waited past its protocol's answer timeout without a response.
pub const TIMEOUT: &str = "timeout";

/// A request whose connection closed before a response came (the client gave up, as nginx's 499
/// says, or the server hung up).
pub const CONNECTION_CLOSED: &str = "connection_closed";

/// An HTTP response status code as the `error_type` of a failed request (OpenTelemetry: the code,
/// as a string, of a response "considered an error" — 5xx at the server, 4xx and 5xx at the
/// client); empty for any other status. Static: one string per code of 400..=599, made once.
#[inline]
pub fn http_status(status: u16, client: bool) -> &'static str {
    let failed = match status {
        500..=599 => true,
        400..=499 => client,
        _ => false,
    };
    if failed { http_error_code(status) } else { "" }
}

#[cold]
fn http_error_code(status: u16) -> &'static str {
    static CODES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let codes = CODES.get_or_init(|| {
        (400u16..600)
            .map(|code| &*Box::leak(code.to_string().into_boxed_str()))
            .collect()
    });
    codes
        .get(usize::from(status - 400))
        .copied()
        .unwrap_or(OTHER)
}

/// Distinct SQLSTATEs kept as label values; any further one is [`OTHER`]. PostgreSQL defines
/// about 260, of which an application meets a handful.
const MAX_SQLSTATES: usize = 256;

static SQLSTATES: Interned = Interned::new(MAX_SQLSTATES);

/// A SQLSTATE (PostgreSQL's and MySQL's error code, e.g. `42P01`): five ASCII digits or uppercase
/// letters, or [`OTHER`]. Interned: only failed operations come here, and each distinct code is
/// allocated once, at most [`MAX_SQLSTATES`] of them.
pub fn sqlstate(code: &str) -> &'static str {
    SQLSTATES.get(code)
}

/// Label values made `'static` once each, up to a cap.
struct Interned {
    cap: usize,
    values: std::sync::Mutex<Vec<&'static str>>,
}

impl Interned {
    const fn new(cap: usize) -> Interned {
        Interned {
            cap,
            values: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn get(&self, code: &str) -> &'static str {
        let well_formed = code.len() == 5
            && code
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if !well_formed {
            return OTHER;
        }
        // A poisoned lock only means another thread panicked while pushing: the list is valid.
        let mut known = self.values.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = known.iter().find(|k| **k == code) {
            return found;
        }
        if known.len() >= self.cap {
            return OTHER;
        }
        let interned: &'static str = Box::leak(code.to_owned().into_boxed_str());
        known.push(interned);
        interned
    }
}

/// The error prefixes Redis and its modules' documentation use (the reply's first word).
const REDIS_PREFIXES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "WRONGPASS",
    "NOAUTH",
    "NOPERM",
    "NOSCRIPT",
    "NOPROTO",
    "NOTBUSY",
    "BUSY",
    "BUSYKEY",
    "BUSYGROUP",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "MISCONF",
    "OOM",
    "EXECABORT",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CROSSSLOT",
    "CLUSTERDOWN",
    "UNKILLABLE",
    "UNBLOCKED",
    "NOGROUP",
];

/// The error type of a Redis error reply's text (without its `-`): its first word if Redis
/// documents it, else [`OTHER`].
pub fn redis(reply: &[u8]) -> &'static str {
    let word = reply.split(|b| *b == b' ').next().unwrap_or_default();
    REDIS_PREFIXES
        .iter()
        .find(|p| p.as_bytes() == word)
        .copied()
        .unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_kept_only_when_well_formed_and_each_is_interned_once() {
        let first = sqlstate("42P01");
        assert_eq!(first, "42P01");
        assert!(std::ptr::eq(first, sqlstate(&String::from("42P01"))));
        for bad in ["", "42p01", "4201", "42P011", "42 01", "4\u{e9}P0"] {
            assert_eq!(sqlstate(bad), OTHER, "{bad:?}");
        }
    }

    #[test]
    fn http_errors_are_5xx_at_the_server_and_4xx_or_5xx_at_the_client() {
        assert_eq!(http_status(503, false), "503");
        assert_eq!(http_status(503, true), "503");
        assert_eq!(http_status(404, false), "");
        assert_eq!(http_status(404, true), "404");
        for ok in [0, 101, 200, 204, 304, 399, 600] {
            assert_eq!(http_status(ok, true), "", "{ok}");
        }
        // One string per code: the RED series cache compares label values by address.
        assert!(std::ptr::eq(
            http_status(500, true),
            http_status(500, false)
        ));
    }

    #[test]
    fn sqlstates_beyond_the_cap_are_other() {
        let interned = Interned::new(3);
        for code in ["AAAAA", "BBBBB", "CCCCC"] {
            assert_eq!(interned.get(code), code);
        }
        assert_eq!(interned.get("DDDDD"), OTHER);
        assert_eq!(interned.get("BBBBB"), "BBBBB");
    }

    #[test]
    fn redis_errors_are_typed_by_their_documented_prefix() {
        assert_eq!(
            redis(b"WRONGPASS invalid username-password pair"),
            "WRONGPASS"
        );
        assert_eq!(redis(b"ERR unknown command 'FOO'"), "ERR");
        assert_eq!(redis(b"MYMODULE something odd"), OTHER);
        assert_eq!(redis(b""), OTHER);
    }
}
