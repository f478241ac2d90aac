//! Body capture: the first `max` bytes and the full size, rendered as text or summarised when binary.
//! A gzip or deflate body (`Content-Encoding`) is decoded first, as far as its kept bytes go.
use super::redact;
use crate::Span;
use crate::secret::shapes;

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
    /// Secret values of a form or JSON body, and tokens of any text body ([`shapes`]), are
    /// redacted when it is rendered.
    redact: bool,
    /// Bytes a compressed body is decoded to at most (the body limit): a small body can claim to
    /// expand to gigabytes.
    max_decoded: usize,
}

impl Body {
    /// An empty body, whose secrets are redacted if `redact`, and which is decoded to at most
    /// `max_decoded` bytes if it is compressed.
    pub fn new(redact: bool, max_decoded: usize) -> Body {
        Body {
            redact,
            max_decoded,
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
    /// a form or JSON body redacted, and tokens in any text ([`shapes`]). A gzip or deflate body
    /// is decoded first (what its kept bytes hold, up to the body limit) and shown after `<gzip
    /// decoded> ` (or `<deflate decoded> `); its size stays that of the bytes sent.
    /// `content_type` and `content_encoding` are spans of `text`; returns the body's.
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
        // Only a compressed body pays for decoding; a body sent as is is read where it lies.
        let decoded = if encoded {
            Coding::of(encoding_text)
                .and_then(|coding| Some((coding, coding.decode(&self.kept, self.max_decoded)?)))
        } else {
            None
        };
        let plain: Option<&[u8]> = match &decoded {
            Some((_, bytes)) => Some(bytes.as_slice()),
            None if encoded => None,
            None => Some(&self.kept),
        };
        let body = match plain {
            Some(plain) if declared_textual(media) => utf8_prefix(plain),
            Some(plain) if type_text.is_empty() => plain_text(plain),
            _ => None,
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
            if let Some((coding, _)) = &decoded {
                text.push_str(coding.marker());
            }
            if self.redact {
                // The text ends before the body did (its limit, a loss, a decoding stopped at
                // its bound): a token the end cuts is redacted all the same.
                let cut = (self.kept.len() as u64) < self.size
                    || decoded
                        .as_ref()
                        .is_some_and(|(_, d)| d.len() >= self.max_decoded);
                shapes::push_redacted(text, body, cut);
            } else {
                text.push_str(body);
            }
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

/// A `Content-Encoding` whose bodies are decoded before they are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    /// `gzip` (`x-gzip`): RFC 1952.
    Gzip,
    /// `deflate`: a zlib stream (RFC 1950), or the raw deflate data (RFC 1951) some servers send.
    Deflate,
}

impl Coding {
    /// The coding a `Content-Encoding` value names alone (None for identity, br, zstd, or a list
    /// of several codings).
    fn of(encoding: &str) -> Option<Coding> {
        let encoding = encoding.trim_ascii();
        if encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if encoding.eq_ignore_ascii_case("deflate") {
            Some(Coding::Deflate)
        } else {
            None
        }
    }

    /// What comes before a decoded body's text.
    fn marker(self) -> &'static str {
        match self {
            Coding::Gzip => "<gzip decoded> ",
            Coding::Deflate => "<deflate decoded> ",
        }
    }

    /// The start of what `kept` — a compressed body's first bytes, cut anywhere by the body
    /// limit or a loss — decodes to, at most `max` bytes (a decompression bomb stops there, after
    /// as much work as `max` bytes take). Decoding stops at the first error, keeping what came
    /// before it: a cut body ends mid-stream, without its checksum. None when nothing decodes.
    fn decode(self, kept: &[u8], max: usize) -> Option<Vec<u8>> {
        use std::io::Read;
        let limit = u64::try_from(max).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        // The error is where the kept bytes end (or stop making sense): what came before is kept.
        // (`bufread` decoders read the slice in place, without a buffer of their own.)
        let _ended = match self {
            Coding::Gzip => flate2::bufread::GzDecoder::new(kept)
                .take(limit)
                .read_to_end(&mut out),
            Coding::Deflate if zlib_header(kept) => flate2::bufread::ZlibDecoder::new(kept)
                .take(limit)
                .read_to_end(&mut out),
            Coding::Deflate => flate2::bufread::DeflateDecoder::new(kept)
                .take(limit)
                .read_to_end(&mut out),
        };
        (!out.is_empty()).then_some(out)
    }
}

/// Do `bytes` start with a zlib header (RFC 1950: deflate, a window of at most 32 KiB, and a check
/// that makes the first two bytes a multiple of 31)?
fn zlib_header(bytes: &[u8]) -> bool {
    match bytes {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && ((u16::from(*cmf) << 8) | u16::from(*flg)) % 31 == 0
        }
        _ => false,
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
        let mut body = Body::new(false, 512);
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

    /// What `body` renders as, with a head whose Content-Type and Content-Encoding are `ty` and
    /// `enc`.
    fn shown(body: Body, ty: &str, enc: &str) -> String {
        let mut text = format!("{ty}|{enc}|");
        let span = body.render_into(
            &mut text,
            Span::at(0, ty.len()),
            Span::at(ty.len() + 1, enc.len()),
        );
        span.of(&text).to_owned()
    }

    /// A body of `bytes` kept up to `max` bytes (and decoded up to as many), secrets redacted.
    fn redacting(bytes: &[u8], max: usize) -> Body {
        let mut body = Body::new(true, max);
        body.push(bytes, max);
        body
    }

    /// `printf '{"user":"ada","password":"hunter2","note":"hi"}' | gzip -9n` (gzip 1.12).
    const GZIP_JSON: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xab\x56\x2a\x2d\x4e\x2d\x52\xb2\x52\x4a\x4c\x49\x54\xd2\x51\x2a\x48\x2c\x2e\x2e\xcf\x2f\x4a\x01\x0a\x64\x94\xe6\x95\xa4\x16\x19\x01\x05\xf3\xf2\x4b\x52\x41\x02\x99\x4a\xb5\x00\xa3\x30\xd4\x31\x2f\x00\x00\x00";

    /// The body of nginx's answer to `curl --compressed` for a JSON file, with `gzip on`
    /// (tests/fixtures/http/gzip_json.server, captured by tests/fixtures/capture.sh): chunked on
    /// the wire, de-chunked here as the reader does.
    fn nginx_gzip_body() -> Vec<u8> {
        let answer: &[u8] = include_bytes!("../../tests/fixtures/http/gzip_json.server");
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head in the capture");
        let head = std::str::from_utf8(&answer[..head_end]).unwrap();
        assert!(head.contains("Content-Encoding: gzip"), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        let mut rest = &answer[head_end + 4..];
        let mut body = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = std::str::from_utf8(&rest[..line_end]).unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&rest[line_end + 2..][..size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
    }

    #[test]
    fn a_gzip_body_is_decoded_before_its_secrets_are_redacted() {
        assert_eq!(
            shown(redacting(GZIP_JSON, 512), "application/json", "gzip"),
            r#"<gzip decoded> {"user":"ada","password":"<redacted>","note":"hi"}"#
        );
        // Its size is that of the bytes sent.
        let body = redacting(GZIP_JSON, 512);
        assert_eq!(body.size, GZIP_JSON.len() as u64);
        // x-gzip is gzip; the coding's name is read as HTTP reads it.
        assert!(
            shown(redacting(GZIP_JSON, 512), "application/json", " X-GZIP")
                .starts_with("<gzip decoded> {\"user\"")
        );

        let nginx = nginx_gzip_body();
        let decoded = shown(redacting(&nginx, 512), "application/json", "gzip");
        assert!(
            decoded.starts_with(
                r#"<gzip decoded> {"user": "ada", "token": "<redacted>", "items": [{"id": 0, "#
            ),
            "{decoded}"
        );
        assert!(!decoded.contains("8f14e45f"), "{decoded}");
    }

    #[test]
    fn a_compressed_body_cut_short_shows_what_its_kept_bytes_decode_to() {
        let nginx = nginx_gzip_body();
        // Kept up to a body limit of 100 bytes: no gzip trailer, 60-odd bytes of JSON.
        let decoded = shown(redacting(&nginx, 100), "application/json", "gzip");
        assert!(
            decoded.starts_with(r#"<gzip decoded> {"user": "ada", "token": "<redacted>", "#),
            "{decoded}"
        );
        // Cut inside the secret's value: what there is of it is redacted.
        let decoded = shown(redacting(&nginx, 84), "application/json", "gzip");
        assert!(
            decoded.starts_with(r#"<gzip decoded> {"user": "ada", "token": "<redacted>"#),
            "{decoded}"
        );
        assert!(!decoded.contains("tok-"), "{decoded}");
        // The capture lost the rest.
        let mut lost = Body::new(true, 512);
        lost.push(&nginx[..70], 512);
        lost.skip(nginx.len() as u64 - 70);
        assert!(shown(lost, "application/json", "gzip").starts_with("<gzip decoded> {\"user\": "));
        // Cut inside the gzip header: nothing to show but what it is.
        assert_eq!(
            shown(redacting(&nginx[..6], 512), "application/json", "gzip"),
            "<binary 6 bytes, application/json, gzip>"
        );
    }

    #[test]
    fn deflate_bodies_are_decoded_whether_zlib_wrapped_or_raw() {
        let json = r#"<deflate decoded> {"user":"ada","api_key":"<redacted>"}"#;
        // Python's zlib.compress(b'{"user":"ada","api_key":"k-123"}', 9): what RFC 9110 means.
        let zlib = b"\x78\xda\xab\x56\x2a\x2d\x4e\x2d\x52\xb2\x52\x4a\x4c\x49\x54\xd2\x51\x4a\x2c\xc8\x8c\xcf\x4e\xad\x04\xf2\xb3\x75\x0d\x8d\x8c\x95\x6a\x01\xa6\xf7\x09\x9e";
        assert_eq!(
            shown(redacting(zlib, 512), "application/json", "deflate"),
            json
        );
        // The same with wbits=-15: the raw deflate data some servers send instead.
        let raw = b"\xab\x56\x2a\x2d\x4e\x2d\x52\xb2\x52\x4a\x4c\x49\x54\xd2\x51\x4a\x2c\xc8\x8c\xcf\x4e\xad\x04\xf2\xb3\x75\x0d\x8d\x8c\x95\x6a\x01";
        assert_eq!(
            shown(redacting(raw, 512), "application/json", "deflate"),
            json
        );
    }

    #[test]
    fn tokens_in_text_bodies_are_redacted_whatever_names_them() {
        use crate::secret::tests::{AWS_KEY_ID, JWT, PEM_BODY, github_token};
        let token = github_token();
        let json = format!(r#"{{"data":"{JWT}","items":[{{"note":"Bearer {token}"}}]}}"#);
        assert_eq!(
            shown(redacting(json.as_bytes(), 512), "application/json", ""),
            r#"{"data":"<redacted>","items":[{"note":"Bearer <redacted>"}]}"#
        );
        let form = format!("next=%2Fhome&sig2={JWT}&q=1");
        assert_eq!(
            shown(
                redacting(form.as_bytes(), 512),
                "application/x-www-form-urlencoded",
                ""
            ),
            "next=%2Fhome&sig2=<redacted>&q=1"
        );
        let log = format!(
            "INFO key {AWS_KEY_ID} used\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}-----END RSA PRIVATE KEY-----\n"
        );
        let expected = "INFO key <redacted> used\n-----BEGIN RSA PRIVATE KEY-----<redacted>-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            shown(redacting(log.as_bytes(), 4096), "text/plain", ""),
            expected
        );
        // Undeclared text is shown, and redacted, too.
        assert_eq!(shown(redacting(log.as_bytes(), 4096), "", ""), expected);
        // Not redacting: as sent.
        let mut plain = Body::new(false, 512);
        plain.push(json.as_bytes(), 512);
        assert_eq!(shown(plain, "application/json", ""), json);
    }

    #[test]
    fn a_gzip_body_s_tokens_are_redacted_once_decoded() {
        use std::io::Write as _;
        let text = format!(r#"{{"data":"{}"}}"#, crate::secret::tests::JWT);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(text.as_bytes()).unwrap();
        let gzip = encoder.finish().unwrap();
        assert_eq!(
            shown(redacting(&gzip, 512), "application/json", "gzip"),
            r#"<gzip decoded> {"data":"<redacted>"}"#
        );
        // Decoded up to a limit that cuts the token: what there is of it.
        let mut cut = Body::new(true, 30);
        cut.push(&gzip, 512);
        assert_eq!(
            shown(cut, "application/json", "gzip"),
            r#"<gzip decoded> {"data":"<redacted>"#
        );
    }

    #[test]
    fn a_token_cut_by_the_body_limit_is_redacted_but_a_whole_body_s_end_is_read_as_it_is() {
        let token = crate::secret::tests::github_token();
        let body = format!("token: {token}\n");
        // Kept up to 20 bytes: `token: ` and 13 bytes of the token.
        assert_eq!(
            shown(redacting(body.as_bytes(), 20), "text/plain", ""),
            "token: <redacted>"
        );
        // Lost after its first bytes.
        let mut lost = Body::new(true, 512);
        lost.push(&body.as_bytes()[..20], 512);
        lost.skip(body.len() as u64 - 20);
        assert_eq!(shown(lost, "text/plain", ""), "token: <redacted>");
        // A whole body ending in what starts like a token is text.
        let whole = "see ghp_abc";
        assert_eq!(
            shown(redacting(whole.as_bytes(), 512), "text/plain", ""),
            whole
        );
    }

    #[test]
    fn a_decompression_bomb_is_decoded_only_up_to_the_body_limit() {
        use std::io::Write as _;
        // 8 MiB of `a` in about 8 KiB of gzip.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..8 {
            encoder.write_all(&[b'a'; 1 << 20]).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        for max in [512, 65_536] {
            let decoded = shown(redacting(&bomb, max), "text/plain", "gzip");
            assert_eq!(decoded.len(), "<gzip decoded> ".len() + max, "limit {max}");
        }
    }

    #[test]
    fn compressed_bodies_that_do_not_decode_to_text_are_summarised_by_their_wire_size() {
        // A gzip header, then no deflate data.
        let broken = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xff\xff\xff\xff\xff\xff";
        assert_eq!(
            shown(redacting(broken, 512), "application/json", "gzip"),
            "<binary 16 bytes, application/json, gzip>"
        );
        // Decodes, to bytes that are no text.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut encoder, &[0x89, b'P', b'N', b'G', 0, 1, 2, 0xff]).unwrap();
        let png = encoder.finish().unwrap();
        let size = png.len();
        assert_eq!(
            shown(redacting(&png, 512), "image/png", "gzip"),
            format!("<binary {size} bytes, image/png, gzip>")
        );
        assert_eq!(
            shown(redacting(&png, 512), "", "gzip"),
            format!("<binary {size} bytes, unknown type, gzip>")
        );
        // Several codings, or one not decoded here.
        assert_eq!(
            shown(redacting(GZIP_JSON, 512), "application/json", "gzip, br"),
            "<binary 62 bytes, application/json, gzip, br>"
        );
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
