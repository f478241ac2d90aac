//! Edge cases as byte constants; real conversations are in tests/dns_captures.rs.
use super::*;

/// A query for `a.test` type A, txid 0x1234 (RFC 1035 layout).
const QUERY: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01";
/// Its answer: `a.test A 10.1.2.3` with the name compressed to the question.
const ANSWER: &[u8] =
    b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01\
\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x01\x02\x03";

fn udp() -> Parser {
    Parser::new(Role::Client, Transport::Udp, &ParseConfig::default())
}

#[test]
fn detect_needs_the_port_hint_or_a_plain_query() {
    assert!(detect(Direction::Egress, QUERY, 53));
    assert!(detect(Direction::Egress, QUERY, 40000));
    assert!(detect(Direction::Ingress, ANSWER, 53));
    assert!(
        !detect(Direction::Ingress, ANSWER, 40000),
        "answers only with the hint"
    );
    assert!(!detect(
        Direction::Egress,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        40000
    ));
    assert!(!detect(Direction::Egress, b"\x00\x01", 53));
}

#[test]
fn detect_sees_a_tcp_length_prefix() {
    let mut framed = vec![0, QUERY.len() as u8];
    framed.extend_from_slice(QUERY);
    assert!(detect(Direction::Egress, &framed, 40000));
}

#[test]
fn a_response_is_matched_to_its_query_by_txid() {
    let mut p = udp();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, QUERY, &mut out).unwrap();
    assert!(out.is_empty());
    p.feed(Direction::Ingress, 350, ANSWER, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].latency_ns, Some(250));
    assert_eq!(out[0].fields[4], Field::String("a.test".into()));
    assert_eq!(
        out[0].fields[3],
        Field::String(r#"{"answers":[{"name":"a.test","type":"A","data":"10.1.2.3"}]}"#.into())
    );
}

#[test]
fn a_response_to_no_query_is_counted_not_recorded() {
    let mut out = Vec::new();
    let err = udp()
        .feed(Direction::Ingress, 1, ANSWER, &mut out)
        .unwrap_err();
    assert_eq!(err.reason, "response_without_query");
    assert!(out.is_empty());
}

#[test]
fn an_unanswered_query_expires_without_response() {
    let mut p = udp();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 100, QUERY, &mut out).unwrap();
    p.expire(100, &mut out);
    assert!(out.is_empty(), "not older than the deadline yet");
    p.expire(101, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].latency_ns, None);
    assert_eq!(out[0].fields[2], Field::Null);
    assert_eq!(out[0].unanswered(), Some(crate::Unanswered::Timeout));
    p.feed(Direction::Egress, 200, QUERY, &mut out).unwrap();
    p.expire(u64::MAX, &mut out);
    assert_eq!(out[1].unanswered(), Some(crate::Unanswered::Closed));
}

#[test]
fn a_tcp_query_whose_answers_are_not_followed_after_lost_bytes_has_no_known_end() {
    let mut p = Parser::new(Role::Client, Transport::Tcp, &ParseConfig::default());
    let mut framed = vec![0, QUERY.len() as u8];
    framed.extend_from_slice(QUERY);
    let mut answer = vec![0, ANSWER.len() as u8];
    answer.extend_from_slice(ANSWER);
    let mut out = Vec::new();
    p.feed(Direction::Egress, 1, &framed, &mut out).unwrap();
    p.feed(Direction::Ingress, 2, &answer[..5], &mut out)
        .unwrap();
    p.gap(Direction::Ingress, 7);
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].latency_ns, out[0].unanswered()), (None, None));
}

#[test]
fn a_short_datagram_is_an_error() {
    let err = udp()
        .feed(Direction::Egress, 1, b"\x12\x34", &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.reason, "short_message");
}

#[test]
fn a_body_the_decoder_rejects_still_stitches_by_header() {
    // Same query with a compression pointer looping onto itself instead of a name.
    let looping = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01";
    let mut p = udp();
    let mut out = Vec::new();
    p.feed(Direction::Egress, 1, looping, &mut out).unwrap();
    p.feed(Direction::Ingress, 2, ANSWER, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[1], Field::Null, "no decodable body");
    assert_eq!(out[0].fields[6], Field::String("NOERROR".into()));
}

#[test]
fn a_query_of_an_unknown_type_is_decoded_and_detected_unless_cut_short_or_malformed() {
    // QUERY with type 65400, which the decoder has no name for: decoded as OTHER.
    let mut unknown = QUERY.to_vec();
    let at = unknown.len() - 4;
    unknown[at..at + 2].copy_from_slice(&65400u16.to_be_bytes());
    let m = Message::parse(&unknown).unwrap();
    assert_eq!(m.first_question(), (Some("a.test".into()), Some("OTHER")));
    // Without the port hint too (a DNS server's socket is detected from the query it reads first).
    assert!(detect(Direction::Ingress, &unknown, 40000));
    // Cut inside its class, or a label length with the reserved 0b01 prefix: no body.
    assert!(
        Message::parse(&unknown[..unknown.len() - 1]).is_some_and(|m| m.queries_json().is_none())
    );
    let mut reserved = unknown.clone();
    reserved[message::HEADER_LEN] = 0x41;
    assert!(Message::parse(&reserved).is_some_and(|m| m.queries_json().is_none()));
}

#[test]
fn absurd_counts_are_not_decoded() {
    let mut bomb = QUERY.to_vec();
    bomb[6..12].copy_from_slice(&[0xff; 6]);
    assert!(Message::parse(&bomb).is_some_and(|m| m.queries_json().is_none()));
}

#[test]
fn tcp_resynchronises_after_lost_bytes() {
    let mut p = Parser::new(Role::Client, Transport::Tcp, &ParseConfig::default());
    let mut framed = vec![0, QUERY.len() as u8];
    framed.extend_from_slice(QUERY);
    let mut out = Vec::new();
    p.feed(Direction::Egress, 1, &framed[..5], &mut out)
        .unwrap();
    p.gap(Direction::Egress, 3);
    // Garbage is ignored until a chunk starts with a frame again.
    p.feed(Direction::Egress, 2, &framed[8..], &mut out)
        .unwrap();
    p.feed(Direction::Egress, 3, &framed, &mut out).unwrap();
    let mut answer = vec![0, ANSWER.len() as u8];
    answer.extend_from_slice(ANSWER);
    p.feed(Direction::Ingress, 4, &answer, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request_ns, 3);
}

#[test]
fn names_are_written_as_simple_dns_displays_them() {
    for text in [
        "web.sonde.test",
        "a",
        "_http._tcp.svc.cluster.local",
        "xn--caf-dma.example",
    ] {
        let name = simple_dns::Name::new(text).unwrap();
        assert_eq!(super::message::name_text(&name), name.to_string());
    }
    // Labels holding a dot, a backslash and bytes that are no UTF-8.
    let labels = [
        simple_dns::Label::new_unchecked(b"a.b"),
        simple_dns::Label::new_unchecked(b"c\\d"),
        simple_dns::Label::new_unchecked(b"\xff\xfe"),
    ];
    let name = simple_dns::Name::new_with_labels(&labels);
    assert_eq!(super::message::name_text(&name), name.to_string());
}

/// Header columns are kept as hex and rendered when read: the rendering is the header's JSON for
/// every field value, and text that is no kept header is shown as it is.
#[test]
fn kept_headers_render_to_the_json_of_the_header() {
    let words = [0u16, 1, 0x00ff, 0x8180, 0xabcd, 0xffff];
    for (i, &w) in words.iter().enumerate() {
        let mut bytes = [0u8; message::HEADER_LEN];
        for (k, chunk) in bytes.chunks_mut(2).enumerate() {
            let word = words[(i + k) % words.len()] ^ w;
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        let header = Header::parse(&bytes).unwrap();
        let kept = header.to_hex();
        assert_eq!(kept.len(), 24);
        assert_eq!(Header::from_hex(&kept), Some(header), "{kept}");
        assert_eq!((message::HEADER_JSON.render)(&kept), header.to_json());
    }
    for rubbish in [
        "",
        "12",
        "zzzz00000000000000000000",
        "123456789012345678901234x",
    ] {
        assert_eq!(Header::from_hex(rubbish), None, "{rubbish:?}");
        assert_eq!((message::HEADER_JSON.render)(rubbish), rubbish);
    }
}
