//! Body capture: the first `max` bytes and the full size, rendered as text or summarised when binary.
use super::redact;
use crate::Span;

/// A body as captured: a bounded prefix and the size the message declared or carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    kept: Vec<u8>,
    /// Bytes of payload (after de-chunking), including bytes lost in the capture. After a loss
    /// inside a chunked body, the chunk-size lines that follow count too (a few bytes per chunk):
    /// which bytes were framing went with the lost ones.
    pub size: u64,
    /// Set after a hole: later bytes are counted but not appended, they do not follow the prefix.
    frozen: bool,
    /// Secret values of a form or JSON body are redacted when it is rendered.
    redact: bool,
}

impl Body {
    /// An empty body, whose secrets are redacted if `redact`.
    pub fn new(redact: bool) -> Body {
        Body {
            redact,
            ..Body::default()
        }
    }

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

    /// Appends the body to `text` — as text when it reads as text (declared textual and valid
    /// UTF-8, or undeclared and valid UTF-8 without control bytes), else as `<binary N bytes,
    /// type>`: never dump an image into a table, nor a file uploaded as a form (`curl
    /// --data-binary` declares any file `x-www-form-urlencoded`); the values of secret fields of
    /// a form or JSON body redacted. `content_type` and `content_encoding` are spans of `text`;
    /// returns the body's.
    pub fn render_into(
        self,
        text: &mut String,
        content_type: Span,
        content_encoding: Span,
    ) -> Span {
        let start = text.len();
        if self.size == 0 {
            return Span::at(start, 0);
        }
        if self.kept.is_empty() && self.frozen {
            // Nothing of it passed through the capture (sent with sendfile, lost to a full ring):
            // said so, where an empty text would read as an empty body.
            let mut size = itoa::Buffer::new();
            text.push('<');
            text.push_str(size.format(self.size));
            text.push_str(" bytes not captured>");
            return Span::at(start, text.len() - start);
        }
        let (type_text, encoding_text) = (content_type.of(text), content_encoding.of(text));
        let encoded = !encoding_text.is_empty() && !encoding_text.eq_ignore_ascii_case("identity");
        let media = media_type(type_text);
        let body = if encoded {
            None
        } else if declared_textual(media) {
            utf8_prefix(&self.kept)
        } else if type_text.is_empty() {
            plain_text(&self.kept)
        } else {
            None
        };
        let redacted = match body {
            Some(body) if self.redact => {
                if media.eq_ignore_ascii_case(FORM) {
                    redact::form(body)
                } else if ends_with_ignore_case(media, b"json") {
                    redact::json(body)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(body) = redacted.as_deref().or(body) {
            text.push_str(body);
        } else {
            // Written piece by piece (`format!` here was a tenth of the agent's work per request
            // for a server answering `application/octet-stream`). The type and the encoding are
            // spans of `text` (valid ones: `of` found them non-empty), copied within it.
            let typed = !type_text.is_empty();
            let mut size = itoa::Buffer::new();
            let size = size.format(self.size);
            text.push_str("<binary ");
            text.push_str(size);
            text.push_str(" bytes, ");
            if typed {
                text.extend_from_within(content_type.range());
            } else {
                text.push_str("unknown type");
            }
            if encoded {
                text.push_str(", ");
                text.extend_from_within(content_encoding.range());
            }
            text.push('>');
        }
        Span::at(start, text.len() - start)
    }
}

/// The media type of a Content-Type value: what comes before its parameters, trimmed.
fn media_type(content_type: &str) -> &[u8] {
    // Bytes, and HTTP's whitespace only: this runs for every body.
    content_type
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

const FORM: &[u8] = b"application/x-www-form-urlencoded";

fn ends_with_ignore_case(media: &[u8], suffix: &[u8]) -> bool {
    media.len() >= suffix.len() && media[media.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Is `media` (a [`media_type`]) one whose bodies are text?
fn declared_textual(media: &[u8]) -> bool {
    let starts = |prefix: &str| {
        media.len() >= prefix.len() && media[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    let ends = |suffix: &str| ends_with_ignore_case(media, suffix.as_bytes());
    starts("text/")
        || [
            "json",
            "xml",
            "javascript",
            "x-www-form-urlencoded",
            "yaml",
            "graphql",
        ]
        .into_iter()
        .any(ends)
}

/// `kept` as text if it is UTF-8, but for a character cut at the end of the kept prefix.
fn utf8_prefix(kept: &[u8]) -> Option<&str> {
    match std::str::from_utf8(kept) {
        Ok(t) => Some(t),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&kept[..e.valid_up_to()]).ok(),
        Err(_) => None,
    }
}

/// An undeclared body is text if it decodes and holds no control bytes but whitespace.
fn plain_text(kept: &[u8]) -> Option<&str> {
    utf8_prefix(kept).filter(|t| {
        !t.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` holds a head whose Content-Type and Content-Encoding values are `ty` and `enc`;
    /// returns what the body `bytes` render as.
    fn rendered(ty: &str, enc: &str, bytes: &[u8]) -> String {
        let mut text = format!("{ty}|{enc}|");
        let type_span = Span::at(0, ty.len());
        let encoding_span = Span::at(ty.len() + 1, enc.len());
        let mut body = Body::default();
        body.push(bytes, 512);
        let span = body.render_into(&mut text, type_span, encoding_span);
        span.of(&text).to_owned()
    }

    #[test]
    fn a_body_none_of_which_was_captured_says_so_and_one_cut_short_shows_its_start() {
        let render = |body: Body| {
            let mut text = String::new();
            let span = body.render_into(&mut text, Span::at(0, 0), Span::at(0, 0));
            span.of(&text).to_owned()
        };
        let mut sent_by_sendfile = Body::default();
        sent_by_sendfile.skip(6);
        assert_eq!(render(sent_by_sendfile), "<6 bytes not captured>");
        let mut cut = Body::default();
        cut.push(b"hel", 512);
        cut.skip(3);
        assert_eq!(render(cut), "hel");
        // Not kept by choice (a body limit of 0) is no loss.
        let mut unkept = Body::default();
        unkept.push(b"hello", 0);
        assert_eq!(render(unkept), "");
    }

    #[test]
    fn binary_bodies_are_summarised_with_their_size_type_and_encoding() {
        let png = [0x89, b'P', b'N', b'G', 0, 1];
        assert_eq!(
            rendered("image/png", "", &png),
            "<binary 6 bytes, image/png>"
        );
        assert_eq!(rendered("", "", &png), "<binary 6 bytes, unknown type>");
        assert_eq!(
            rendered("text/html", "gzip", b"\x1f\x8b\x08"),
            "<binary 3 bytes, text/html, gzip>"
        );
        assert_eq!(
            rendered("", "br", b"\x0b\x02"),
            "<binary 2 bytes, unknown type, br>"
        );
    }

    #[test]
    fn bytes_that_are_no_text_are_summarised_whatever_the_type_declares() {
        // curl --data-binary @file: any file is declared a form.
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            rendered(form, "", &[0x39, 0xff, 0x3c, 0x1d, 0x00]),
            "<binary 5 bytes, application/x-www-form-urlencoded>"
        );
        assert_eq!(
            rendered("application/json", "", b"{\"a\":\xc3\x28}"),
            "<binary 8 bytes, application/json>"
        );
        // A character cut by the end of the kept prefix is no reason: the text ends before it.
        let mut cut = b"caf".to_vec();
        cut.push(0xc3);
        assert_eq!(rendered("text/plain", "", &cut), "caf");
        assert_eq!(rendered("", "", &cut), "caf");
    }

    #[test]
    fn textual_bodies_are_kept_as_text() {
        assert_eq!(rendered("application/json", "", b"{\"a\":1}"), "{\"a\":1}");
        assert_eq!(rendered("", "identity", b"hello\n"), "hello\n");
        // The media type is what comes before the parameters, without the whitespace around it.
        assert_eq!(rendered("Text/HTML ; charset=utf-8", "", b"<p>"), "<p>");
        assert_eq!(rendered(" image/svg+xml\t", "", b"<svg/>"), "<svg/>");
        assert_eq!(
            rendered("image/png; name=\"a.txt\"", "", b"png"),
            "<binary 3 bytes, image/png; name=\"a.txt\">"
        );
    }
}
