//! One DNS message: its header (read here) and, when `simple-dns` can decode the body, its
//! questions and answers rendered as owned strings; the JSON columns are written with [`crate::json`].
use std::net::{Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::RData;

use crate::Renderer;
use crate::json::{self, Object};

pub(crate) const HEADER_LEN: usize = 12;

const HEADER_JSON_NAME: &str = "dns_header_json";

/// The `req_header` / `resp_header` columns: a header kept as [`Header::to_hex`] → Pixie's header
/// JSON. Written for every exchange and mostly evicted unread, so the JSON (14 fields, two per
/// exchange: a fifth of a DNS exchange's parsing) is written only for the rows read.
pub(crate) const HEADER_JSON: Renderer = Renderer {
    name: HEADER_JSON_NAME,
    render: render_header,
};

fn render_header(kept: &str) -> String {
    // Rows only ever hold `to_hex` text; anything else is shown as it is.
    Header::from_hex(kept).map_or_else(|| kept.to_string(), Header::to_json)
}

/// The fixed header (RFC 1035 §4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub id: u16,
    flags: u16,
    qd: u16,
    an: u16,
    ns: u16,
    ar: u16,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        let w = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        Some(Header {
            id: w(0)?,
            flags: w(2)?,
            qd: w(4)?,
            an: w(6)?,
            ns: w(8)?,
            ar: w(10)?,
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    fn opcode(&self) -> u16 {
        (self.flags >> 11) & 0xf
    }

    fn bit(&self, n: u16) -> u8 {
        u8::from(self.flags & (1 << n) != 0)
    }

    pub fn rcode(&self) -> u16 {
        self.flags & 0xf
    }

    /// Plausible for real traffic: a known opcode, the zero bit clear, one or a few questions.
    pub fn is_sane(&self) -> bool {
        matches!(self.opcode(), 0 | 1 | 2 | 4 | 5)
            && self.bit(6) == 0
            && (1..=4).contains(&self.qd)
            && self.ns <= 64
            && self.ar <= 64
    }

    pub fn rcode_name(&self) -> &'static str {
        match self.rcode() {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            6 => "YXDOMAIN",
            7 => "YXRRSET",
            8 => "NXRRSET",
            9 => "NOTAUTH",
            10 => "NOTZONE",
            _ => "RCODE_OTHER",
        }
    }

    /// The header as rows keep it: its six 16-bit fields as 24 hex digits ([`HEADER_JSON`] turns
    /// them into the JSON object when the row is read).
    pub fn to_hex(self) -> String {
        let mut out = String::with_capacity(24);
        for word in [self.id, self.flags, self.qd, self.an, self.ns, self.ar] {
            for shift in [12, 8, 4, 0] {
                out.push(json::HEX[usize::from((word >> shift) & 0xf)] as char);
            }
        }
        out
    }

    /// The header of [`Header::to_hex`]'s text (None for any other text).
    pub fn from_hex(text: &str) -> Option<Header> {
        if text.len() != 2 * HEADER_LEN {
            return None;
        }
        let digit = |d: u8| char::from(d).to_digit(16);
        let mut bytes = [0u8; HEADER_LEN];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
            *byte = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()?;
        }
        Header::parse(&bytes)
    }

    /// Pixie's header JSON (flags as 0/1).
    pub fn to_json(self) -> String {
        let mut out = Vec::with_capacity(192);
        Object::new(&mut out)
            .u64("txid", self.id)
            .u64("qr", self.bit(15))
            .u64("opcode", self.opcode())
            .u64("aa", self.bit(10))
            .u64("tc", self.bit(9))
            .u64("rd", self.bit(8))
            .u64("ra", self.bit(7))
            .u64("ad", self.bit(5))
            .u64("cd", self.bit(4))
            .u64("rcode", self.rcode())
            .u64("num_queries", self.qd)
            .u64("num_answers", self.an)
            .u64("num_auth", self.ns)
            .u64("num_addl", self.ar)
            .end();
        json::into_string(out)
    }

    /// Can the counts possibly fit in `len` bytes? (A question takes at least 5 bytes, a
    /// record 11.) Keeps absurd counts from making the decoder reserve megabytes.
    fn counts_fit(&self, len: usize) -> bool {
        let records = u64::from(self.an) + u64::from(self.ns) + u64::from(self.ar);
        HEADER_LEN as u64 + 5 * u64::from(self.qd) + 11 * records <= len as u64
    }
}

/// A question as (name, type).
type Question = (String, &'static str);

/// An answer as (name, type, data).
type Answer = (String, &'static str, Option<String>);

/// A parsed message; `body` is None when the decoder rejected it.
pub(crate) struct Message {
    pub header: Header,
    body: Option<(Vec<Question>, Vec<Answer>)>,
}

impl Message {
    pub fn parse(bytes: &[u8]) -> Option<Message> {
        let header = Header::parse(bytes)?;
        let body = if header.counts_fit(bytes.len()) {
            decode(bytes, header.qd)
        } else {
            None
        };
        Some(Message { header, body })
    }

    pub fn first_question(&self) -> (Option<String>, Option<&'static str>) {
        match self.body.as_ref().and_then(|(q, _)| q.first()) {
            Some((name, ty)) => (Some(name.clone()), Some(*ty)),
            None => (None, None),
        }
    }

    /// `{"queries":[{"name":…,"type":…}]}`, None when the body was not decoded.
    pub fn queries_json(&self) -> Option<String> {
        let (questions, _) = self.body.as_ref()?;
        Some(list("queries", questions, |o, (name, ty)| {
            o.str("name", name).str("type", ty);
        }))
    }

    /// `{"answers":[{"name":…,"type":…,"data":…}]}`, None when the body was not decoded.
    pub fn answers_json(&self) -> Option<String> {
        let (_, answers) = self.body.as_ref()?;
        Some(list("answers", answers, |o, (name, ty, data)| {
            o.str("name", name)
                .str("type", ty)
                .opt_str("data", data.as_deref());
        }))
    }
}

/// Questions and answers of a message, None when it does not decode.
fn decode(bytes: &[u8], qd: u16) -> Option<(Vec<Question>, Vec<Answer>)> {
    if let Ok(packet) = simple_dns::Packet::parse(bytes) {
        return Some(body(&packet, &[]));
    }
    let (patched, codes) = with_known_qtypes(bytes, qd)?;
    let packet = simple_dns::Packet::parse(&patched).ok()?;
    Some(body(&packet, &codes))
}

/// simple-dns rejects a whole message whose question has a type it has no name for (SSHFP, TLSA,
/// private types): the message with such types read as ANY, and the questions' own type codes.
/// None when no question has such a type (the message is wrong elsewhere).
fn with_known_qtypes(bytes: &[u8], qd: u16) -> Option<(Vec<u8>, Vec<u16>)> {
    let offsets = question_type_offsets(bytes, qd)?;
    let mut patched = bytes.to_vec();
    let mut codes = Vec::with_capacity(offsets.len());
    for at in offsets {
        let field = patched.get_mut(at..at + 2)?;
        let code = u16::from_be_bytes([field[0], field[1]]);
        codes.push(code);
        if simple_dns::QTYPE::try_from(code).is_err() {
            field.copy_from_slice(&u16::from(simple_dns::QTYPE::ANY).to_be_bytes());
        }
    }
    (patched != bytes).then_some((patched, codes))
}

/// A decoded message's questions (typed by `codes` where given) and answers, as owned text.
fn body(packet: &simple_dns::Packet<'_>, codes: &[u16]) -> (Vec<Question>, Vec<Answer>) {
    let questions = packet
        .questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let code = codes.get(i).copied().unwrap_or_else(|| q.qtype.into());
            (name_text(&q.qname), type_name(code))
        })
        .collect();
    let answers = packet
        .answers
        .iter()
        .map(|rr| {
            let ty = type_name(rr.rdata.type_code().into());
            (name_text(&rr.name), ty, rdata_text(&rr.rdata))
        })
        .collect();
    (questions, answers)
}

/// Where the type of each of the `qd` questions is (they follow the header: a name, then type
/// and class), None if they do not fit.
fn question_type_offsets(bytes: &[u8], qd: u16) -> Option<Vec<usize>> {
    let mut at = HEADER_LEN;
    let mut offsets = Vec::with_capacity(usize::from(qd));
    for _ in 0..qd {
        at = skip_name(bytes, at)?;
        bytes.get(at..at + 4)?;
        offsets.push(at);
        at += 4;
    }
    Some(offsets)
}

/// The offset after the name at `at`: labels up to the root label or a compression pointer.
fn skip_name(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xc0 => return Some(at + 2),
            _ => return None,
        }
    }
}

/// `{"<key>":[{…},…]}`: one object per item, its fields written by `fields`.
fn list<T>(key: &'static str, items: &[T], fields: impl Fn(&mut Object<'_>, &T)) -> String {
    let mut out = Vec::with_capacity(32 + 64 * items.len());
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut object = Object::new(&mut out);
        fields(&mut object, item);
        object.end();
    }
    out.extend_from_slice(b"]}");
    json::into_string(out)
}

/// Is this a well-formed standard query (what a client sends first)? Strict, for detection
/// without a port hint.
pub(crate) fn is_plain_query(bytes: &[u8]) -> bool {
    let Some(h) = Header::parse(bytes) else {
        return false;
    };
    if h.is_response() || h.opcode() != 0 || h.qd != 1 || h.an != 0 || h.ns != 0 || h.ar > 1 {
        return false;
    }
    if h.bit(6) != 0 || h.rcode() != 0 {
        return false;
    }
    let named = |p: simple_dns::Packet<'_>| {
        p.questions
            .first()
            .is_some_and(|q| q.qname.get_labels().iter().all(|l| !l.as_ref().is_empty()))
    };
    match simple_dns::Packet::parse(bytes) {
        Ok(p) => named(p),
        // A query of a type simple-dns has no name for is a query all the same: a DNS server's
        // socket is detected from its first datagram, and then never again.
        Err(_) => with_known_qtypes(bytes, 1)
            .is_some_and(|(patched, _)| simple_dns::Packet::parse(&patched).is_ok_and(named)),
    }
}

/// Mnemonic of a record type; bounded (RFC 3597's `TYPEnnn` is not: unknown types share one name).
fn type_name(code: u16) -> &'static str {
    match code {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        41 => "OPT",
        43 => "DS",
        44 => "SSHFP",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        52 => "TLSA",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        _ => "OTHER",
    }
}

/// The answer's data as text for the common types; None for the others.
fn rdata_text(rdata: &RData) -> Option<String> {
    Some(match rdata {
        RData::A(a) => Ipv4Addr::from(a.address).to_string(),
        RData::AAAA(a) => Ipv6Addr::from(a.address).to_string(),
        RData::CNAME(n) => name_text(&n.0),
        RData::NS(n) => name_text(&n.0),
        RData::PTR(n) => name_text(&n.0),
        RData::MX(mx) => format!("{} {}", mx.preference, mx.exchange),
        RData::SRV(srv) => format!(
            "{} {} {} {}",
            srv.priority, srv.weight, srv.port, srv.target
        ),
        RData::TXT(txt) => String::try_from(txt.clone()).ok()?,
        _ => return None,
    })
}

/// A name as text: what simple-dns's `Display` writes (labels decoded lossily, `.` and `\\` inside a
/// label escaped with `\\`, labels joined by `.`), without a formatter call per character — names
/// are formatted for every question and answer.
pub(crate) fn name_text(name: &simple_dns::Name<'_>) -> String {
    let mut out = String::with_capacity(64);
    for (i, label) in name.get_labels().iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        let bytes: &[u8] = label.as_ref();
        let text = String::from_utf8_lossy(bytes);
        if text.bytes().any(|b| b == b'.' || b == b'\\') {
            for c in text.chars() {
                if c == '.' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(&text);
        }
    }
    out
}
