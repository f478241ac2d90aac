//! The JSON the record columns hold (HTTP headers, DNS headers, questions and answers), written
//! straight into a byte buffer, byte for byte what serde_json writes for the same values. Written by
//! hand because these run for every record: building a `serde_json::Value` per field and formatting
//! it cost several allocations and a formatter pass per value (most of a DNS record's cost).

/// Lowercase hex digits by value (the `\u00xx` escapes; DNS headers are kept in rows as hex too).
pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// The inside of a JSON string: `\"`, `\\`, the short forms of \b \f \n \r \t, `\u00xx` (lowercase
/// hex) for other control characters; everything else as is (serde_json's escapes).
pub(crate) fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
}

/// A JSON string (quoted, escaped).
pub(crate) fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// A JSON number from an unsigned integer.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The bytes written as a String: every writer above writes UTF-8 (strings are copied from `&str`),
/// so the check at the end never fails; if it did, nothing would panic.
pub(crate) fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A JSON object written field by field, keys in the order written.
pub(crate) struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, first: true }
    }

    /// Keys are the callers' constant identifiers, written as is (nothing in them to escape).
    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn u64(&mut self, key: &'static str, v: impl Into<u64>) -> &mut Self {
        push_u64(self.key(key), v.into());
        self
    }

    pub fn str(&mut self, key: &'static str, v: &str) -> &mut Self {
        push_string(self.key(key), v);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, key: &'static str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => push_string(self.key(key), v),
            None => self.key(key).extend_from_slice(b"null"),
        }
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let strings = [
            "",
            "plain",
            "quote \" back \\ ctl \u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f} é ✓ 😀",
        ];
        for s in strings {
            let mut out = Vec::new();
            push_string(&mut out, s);
            assert_eq!(into_string(out), serde_json::to_string(s).unwrap());
        }
        for n in [0, 7, 10, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(into_string(out), n.to_string());
        }
        let mut out = Vec::new();
        Object::new(&mut out)
            .u64("b", 1u8)
            .str("a", "x\"")
            .opt_str("n", None)
            .opt_str("s", Some("y"))
            .end();
        assert_eq!(into_string(out), r#"{"b":1,"a":"x\"","n":null,"s":"y"}"#);
    }
}
