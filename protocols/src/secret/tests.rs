//! Secret values by shape ([`super::shapes`]): each shape, its boundaries, the cut-text rule, and
//! the ordinary values that must be left alone. Tokens are built at run time from parts, so that
//! no whole vendor token sits in the source for a secret scanner to flag.
use super::shapes::{SHORTEST, Shape, any_anchor, holds_token, push_redacted, redacted, tokens};

/// The jwt.io example (HS256, `{"sub":"1234567890","name":"John Doe","iat":1516239022}`).
pub(crate) const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
/// AWS's documented example key pair.
pub(crate) const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
pub(crate) const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// `prefix` then `n` characters cycling through letters of both cases and digits.
pub(crate) fn fake(prefix: &str, n: usize) -> String {
    const ALPHABET: &[u8] = b"a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuVwXyZ";
    let tail: String = (0..n)
        .map(|i| char::from(ALPHABET[i % ALPHABET.len()]))
        .collect();
    format!("{prefix}{tail}")
}

pub(crate) fn github_token() -> String {
    fake("ghp_", 36)
}

/// A PEM private key's body lines (base64 of nothing in particular).
pub(crate) const PEM_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n";

/// Shapes found in `text`, with their text.
fn found(text: &str, cut: bool) -> Vec<(Shape, &str)> {
    tokens(text, cut)
        .into_iter()
        .map(|t| (t.shape, &text[t.range]))
        .collect()
}

/// `text` as shown: tokens redacted (`cut` says whether the text was cut at its end).
fn shown(text: &str, cut: bool) -> String {
    let mut out = String::new();
    push_redacted(&mut out, text, cut);
    out
}

#[test]
fn a_jwt_is_redacted_whatever_names_it_and_the_text_around_stays() {
    assert_eq!(
        shown(&format!(r#"{{"data": "{JWT}", "n": 1}}"#), false),
        r#"{"data": "<redacted>", "n": 1}"#
    );
    assert_eq!(found(JWT, false), [(Shape::Jwt, JWT)]);
    // Unsigned (`alg: none`): the third segment is empty.
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.";
    assert_eq!(shown(&format!("t={unsigned} ok"), false), "t=<redacted> ok");
}

#[test]
fn an_encrypted_jwt_is_redacted_whole() {
    // RFC 7516's header `{"alg":"RSA-OAEP","enc":"A256GCM"}`; a key, IV, ciphertext and tag of
    // the lengths A256GCM gives them.
    let header = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ";
    let jwe = format!(
        "{header}.{}.{}.{}.{}",
        fake("", 342),
        fake("", 16),
        fake("", 40),
        fake("", 22)
    );
    assert_eq!(
        found(&format!("id_token={jwe}&x=1"), false),
        [(Shape::Jwt, &*jwe)]
    );
    // Direct encryption: no encrypted key.
    let direct = format!(
        "{header}..{}.{}.{}",
        fake("", 16),
        fake("", 8),
        fake("", 22)
    );
    assert_eq!(shown(&format!(r#""{direct}""#), false), r#""<redacted>""#);
    // Dotted names after a base64 JSON value are no JWE: the IV and tag are too short.
    assert_eq!(found(&format!("{header}.a.b.c.d"), false), []);
}

#[test]
fn one_base64_json_segment_is_no_jwt() {
    // A pagination cursor: base64 of `{"id":123}`.
    for text in [
        r#"{"next":"eyJpZCI6MTIzfQ"}"#,
        "eyJpZCI6MTIzfQ.notjson.x",
        "eyJhbGciOi.eyJzdWIi",
        "xeyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.sig",
    ] {
        assert_eq!(found(text, false), [], "{text}");
    }
}

#[test]
fn aws_key_ids_and_the_secret_beside_one_are_redacted() {
    let credentials = format!(
        "[default]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\n"
    );
    assert_eq!(
        found(&credentials, false),
        [
            (Shape::AwsKeyId, AWS_KEY_ID),
            (Shape::AwsSecret, AWS_SECRET)
        ]
    );
    assert_eq!(
        shown(&credentials, false),
        "[default]\naws_access_key_id = <redacted>\naws_secret_access_key = <redacted>\n"
    );
    let temporary = AWS_KEY_ID.replacen("AKIA", "ASIA", 1);
    assert_eq!(found(&temporary, false), [(Shape::AwsKeyId, &*temporary)]);
    // Alone, 40 characters of base64 are no secret; nor is a hex digest beside a key id.
    assert_eq!(found(AWS_SECRET, false), []);
    let digest = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
    assert_eq!(
        found(&format!("{AWS_KEY_ID} {digest}"), false),
        [(Shape::AwsKeyId, AWS_KEY_ID)]
    );
}

#[test]
fn akia_without_its_sixteen_characters_is_left() {
    for text in [
        "the AKIA prefix marks long-term keys",
        "AKIAIOSFODNN7EXAMPL",    // 15 after the prefix
        "AKIAIOSFODNN7EXAMPLEX",  // 17: a longer word
        "AKIAIOSFODNN7EXAMPLEab", // followed by more of a word
        "XAKIAIOSFODNN7EXAMPLE",
        "AKIA",
    ] {
        assert_eq!(found(text, false), [], "{text}");
    }
}

#[test]
fn github_tokens_classic_and_fine_grained_are_redacted() {
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        let token = fake(prefix, 36);
        assert_eq!(
            found(&format!("token: {token}."), false),
            [(Shape::GitHub, &*token)]
        );
    }
    let fine_grained = format!("{}_{}", fake("github_pat_", 22), fake("", 59));
    assert_eq!(
        found(&format!("'{fine_grained}'"), false),
        [(Shape::GitHub, &*fine_grained)]
    );
    for text in [fake("ghp_", 35), fake("ghx_", 36), fake("xghp_", 36)] {
        assert_eq!(found(&text, false), [], "{text}");
    }
}

#[test]
fn slack_stripe_and_google_keys_are_redacted() {
    let slack = format!("xoxb-{}-{}", "1234567890", fake("", 24));
    let stripe = fake("sk_live_", 24);
    let restricted = fake("rk_live_", 99);
    let test = fake("sk_test_", 99);
    let google = fake("AIza", 35);
    let text = format!("a={slack}&b={stripe}&c={restricted}&d={google}&e={test}");
    assert_eq!(
        found(&text, false),
        [
            (Shape::Slack, &*slack),
            (Shape::Stripe, &*stripe),
            (Shape::Stripe, &*restricted),
            (Shape::GoogleApiKey, &*google),
            (Shape::Stripe, &*test),
        ]
    );
    assert_eq!(
        shown(&text, false),
        "a=<redacted>&b=<redacted>&c=<redacted>&d=<redacted>&e=<redacted>"
    );
}

#[test]
fn words_that_start_like_a_vendor_prefix_are_left() {
    for text in [
        format!("skip sketch skill {}", fake("sk_demo_", 24)),
        "sk_live_short".to_string(),
        "sk_test_short".to_string(),
        "xoxo, gossip girl; xoxb-short".to_string(),
        fake("AIza", 34),
        fake("AIza", 36),
        "ghp_ is GitHub's prefix".to_string(),
    ] {
        assert_eq!(found(&text, false), [], "{text}");
    }
}

#[test]
fn a_pem_private_key_s_body_is_redacted_between_its_armor_lines() {
    for label in [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ] {
        let pem = format!("-----BEGIN {label}-----\n{PEM_BODY}-----END {label}-----\n");
        assert_eq!(
            shown(&pem, false),
            format!("-----BEGIN {label}-----<redacted>-----END {label}-----\n")
        );
    }
    // Inside a JSON string, line breaks escaped.
    let escaped = PEM_BODY.replace('\n', "\\n");
    let json = format!(
        r#"{{"key":"-----BEGIN PRIVATE KEY-----\n{escaped}-----END PRIVATE KEY-----\n","id":1}}"#
    );
    assert_eq!(
        shown(&json, false),
        r#"{"key":"-----BEGIN PRIVATE KEY-----<redacted>-----END PRIVATE KEY-----\n","id":1}"#
    );
    // Public keys and certificates are no secret.
    let public = format!("-----BEGIN PUBLIC KEY-----\n{PEM_BODY}-----END PUBLIC KEY-----");
    assert_eq!(found(&public, false), []);
}

#[test]
fn a_pem_block_cut_off_before_its_end_is_redacted_to_the_end() {
    let cut = format!("key=-----BEGIN EC PRIVATE KEY-----\n{}", &PEM_BODY[..30]);
    assert_eq!(
        shown(&cut, true),
        "key=-----BEGIN EC PRIVATE KEY-----<redacted>"
    );
    // Cut in its BEGIN line: nothing of the key is there yet.
    assert_eq!(found("-----BEGIN RSA PRIV", true), []);
}

#[test]
fn bearer_tokens_in_text_are_redacted_but_not_the_word() {
    let opaque = "2YotnFZFEjr1zCsicMWpAA";
    assert_eq!(
        shown(
            &format!(r#"{{"auth_header":"Bearer {opaque}"}} GET /x Bearer abc.123-def_"#),
            false
        ),
        r#"{"auth_header":"Bearer <redacted>"} GET /x Bearer <redacted>"#
    );
    for text in [
        "send a Bearer token in the header",
        "Bearer authentication",
        r#"WWW-Authenticate: Bearer realm="api", error="invalid_token""#,
        "bearer 2YotnFZFEjr1zCsicMWpAA", // lower case: what clients do not send
    ] {
        assert_eq!(found(text, false), [], "{text}");
    }
}

#[test]
fn basic_credentials_in_text_are_redacted_but_not_the_word() {
    // `Aladdin:open sesame`, RFC 7617's example, in a script's curl command and a JSON log line.
    let curl = "curl -H 'Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==' https://api";
    assert_eq!(
        shown(curl, false),
        "curl -H 'Authorization: Basic <redacted>' https://api"
    );
    let log = r#"{"msg":"retry","header":"Basic YWJjOmRlZmdo"}"#;
    assert_eq!(found(log, false), [(Shape::Basic, "YWJjOmRlZmdo")]);
    for text in [
        "Basic Authentication is enabled",
        r#"WWW-Authenticate: Basic realm="api", charset="UTF-8""#,
        "Basic Om5vdXNlcjEyMw==", // `:nouser123`
        "Basic aGVsbG8gd29ybGQh", // `hello world!`: no `:`
        "basic YWJjOmRlZmdo",     // lower case: what clients do not send
    ] {
        assert_eq!(found(text, false), [], "{text}");
    }
    // Cut inside the credentials: what there is of them goes.
    assert_eq!(
        shown("Authorization: Basic QWxhZGRp", true),
        "Authorization: Basic <redacted>"
    );
}

#[test]
fn ordinary_ids_and_text_are_left() {
    for text in [
        "550e8400-e29b-41d4-a716-446655440000",
        "dGhpcyBpcyBqdXN0IGJhc2U2NCBvZiBzb21lIHRleHQ=",
        "aGVsbG8gd29ybGQ_Xx-Yy",
        r#"{"user_id":42,"created_at":"2026-12-07T09:00:00Z","INDEX_NAME":"BIG_TABLE"}"#,
        "SELECT * FROM jobs WHERE id IN (1, 2) AND state IS NOT NULL",
        "Host: localhost:8080\r\nUser-Agent: nginx/1.22.1\r\nContent-Type: text/plain",
        "Boxes and Bytes: xylophone, Ixion, Jaguar, __init__",
        "",
    ] {
        assert_eq!(found(text, false), [], "{text}");
        assert_eq!(redacted(text, true), None, "{text}");
    }
}

#[test]
fn escapes_before_a_token_are_boundaries_and_a_token_inside_a_word_is_none() {
    let token = github_token();
    assert_eq!(
        shown(&format!("q=%22{token}%22"), false),
        "q=%22<redacted>%22"
    );
    assert_eq!(
        shown(&format!(r#"{{"log":"line\n{AWS_KEY_ID}"}}"#), false),
        r#"{"log":"line\n<redacted>"}"#
    );
    assert_eq!(found(&format!("abc{token}"), false), []);
}

#[test]
fn a_token_cut_by_the_end_of_a_cut_text_is_redacted_only_then() {
    let cut_tokens = [
        JWT[..20].to_string(),
        JWT[..JWT.find('.').unwrap() + 2].to_string(),
        AWS_KEY_ID[..10].to_string(),
        fake("ghp_", 10),
        fake("github_pat_", 30),
        fake("xoxp-", 3),
        fake("sk_live_", 5),
        fake("AIza", 20),
        "Bearer 2Yot".to_string(),
    ];
    for token in cut_tokens {
        let text = format!(r#"{{"data":"{token}"#);
        let kept = if token.starts_with("Bearer") {
            "Bearer "
        } else {
            ""
        };
        assert_eq!(
            shown(&text, true),
            format!(r#"{{"data":"{kept}<redacted>"#),
            "{token}"
        );
        assert_eq!(found(&text, false), [], "whole, {token} is no token");
    }
    // The AWS secret beside a key id, cut.
    let text = format!("{AWS_KEY_ID} {}", &AWS_SECRET[..20]);
    assert_eq!(shown(&text, true), "<redacted> <redacted>");
}

#[test]
fn redacted_copies_only_when_there_is_a_token() {
    let token = github_token();
    assert_eq!(redacted("nothing here", false), None);
    assert_eq!(
        redacted(&format!("é {token} ü"), false).as_deref(),
        Some("é <redacted> ü")
    );
    assert!(holds_token(token.as_bytes(), false));
    assert!(!holds_token(b"nothing here", false));
}

#[test]
fn tokens_are_found_at_every_offset_across_blocks() {
    // Anchors are looked for 32 bytes at a time, the last block overlapping the one before:
    // a token must be found wherever it falls, in texts of every length around that.
    let token = github_token();
    for len in 0..100 {
        for at in 0..=len {
            let mut text = "-".repeat(len);
            text.insert_str(at, &format!(" {token} "));
            assert_eq!(
                found(&text, false),
                [(Shape::GitHub, &*token)],
                "len {len} at {at}"
            );
            assert!(holds_token(text.as_bytes(), false), "len {len} at {at}");
        }
    }
    // The first look, for any anchor byte at all, at every length and position.
    for len in 0..70 {
        let none = vec![b'-'; len];
        assert!(!any_anchor(&none), "len {len}");
        for at in 0..len {
            for anchor in *b"JI_xB" {
                let mut one = none.clone();
                one[at] = anchor;
                assert!(any_anchor(&one), "len {len}, {} at {at}", anchor as char);
            }
        }
    }
    // Several anchors in one block, and tokens back to back.
    let many = format!("{token} x_I_B {AWS_KEY_ID} {JWT},{token}");
    let shapes: Vec<Shape> = found(&many, false).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        shapes,
        [Shape::GitHub, Shape::AwsKeyId, Shape::Jwt, Shape::GitHub]
    );
}

#[test]
fn no_whole_token_is_shorter_than_the_length_texts_are_skipped_below() {
    // The shortest of each shape: one character less is no token.
    let shortest = [
        (Shape::Jwt, "eyJhbGci.eyJzdWIi.".to_string()),
        (Shape::AwsKeyId, AWS_KEY_ID.to_string()),
        (Shape::GitHub, fake("ghp_", 36)),
        (Shape::GitHub, fake("github_pat_", 82)),
        (Shape::Slack, fake("xoxb-", 10)),
        (Shape::Stripe, fake("sk_live_", 24)),
        (Shape::GoogleApiKey, fake("AIza", 35)),
        (Shape::Bearer, "Bearer 2Yotn1Fz".to_string()),
        (Shape::Basic, "Basic YWJjOmRlZmdo".to_string()),
    ];
    for (shape, token) in shortest {
        assert!(token.len() >= SHORTEST, "{token}");
        let shapes: Vec<Shape> = found(&token, false).into_iter().map(|(s, _)| s).collect();
        assert_eq!(shapes, [shape], "{token}");
        let shorter = &token[..token.len() - 1];
        assert_eq!(found(shorter, false), [], "{shorter}");
    }
    let pem = "-----BEGIN PRIVATE KEY-----\nM";
    assert!(pem.len() >= SHORTEST);
    assert_eq!(found(pem, false), [(Shape::PemPrivateKey, "\nM")]);
    // A cut text is looked at whatever its length.
    assert!(holds_token(b"ghp_a1", true));
    assert!(!holds_token(b"ghp_a1", false));
}
