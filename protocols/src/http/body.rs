//! Body capture: the first `max` bytes and the full size, rendered as text or summarised when binary.

/// A body as captured: a bounded prefix and the size the message declared or carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    kept: Vec<u8>,
    /// Bytes of payload (after de-chunking), including bytes lost in the capture.
    pub size: u64,
    /// Set after a hole: later bytes are counted but not appended, they do not follow the prefix.
    frozen: bool,
}

impl Body {
    pub fn push(&mut self, data: &[u8], max: usize) {
        let room = if self.frozen {
            0
        } else {
            max.saturating_sub(self.kept.len())
        };
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.size = self.size.saturating_add(data.len() as u64);
    }

    /// Bytes known to exist but not captured: the body stays sized right, its text ends early.
    pub fn skip(&mut self, lost: u64) {
        self.size = self.size.saturating_add(lost);
        self.frozen = true;
    }

    /// Text when it reads as text (declared textual, or undeclared and valid UTF-8 without control
    /// bytes), else `<binary N bytes, type>`: never dump an image into a table.
    /// Consumes the body: text takes over the kept bytes without a copy.
    pub fn render(self, content_type: &str, content_encoding: &str) -> String {
        if self.size == 0 {
            return String::new();
        }
        let encoded =
            !content_encoding.is_empty() && !content_encoding.eq_ignore_ascii_case("identity");
        if !encoded && looks_textual(content_type, &self.kept) {
            return String::from_utf8(self.kept)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        }
        let mut what = if content_type.is_empty() {
            "unknown type".to_string()
        } else {
            content_type.to_string()
        };
        if encoded {
            what.push_str(", ");
            what.push_str(content_encoding);
        }
        format!("<binary {} bytes, {what}>", self.size)
    }
}

fn looks_textual(content_type: &str, kept: &[u8]) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let declared_text = media.starts_with("text/")
        || media.ends_with("json")
        || media.ends_with("xml")
        || media.ends_with("javascript")
        || media.ends_with("x-www-form-urlencoded")
        || media.ends_with("yaml")
        || media.ends_with("graphql");
    if declared_text {
        return true;
    }
    if !media.is_empty() {
        return false;
    }
    // Undeclared: text if it decodes, allowing a character cut at the end of the kept prefix.
    let text = match std::str::from_utf8(kept) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&kept[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}
