//! Events from the ring buffer: the header, the slot records, and the column values their
//! [`Render`]s make of them.
use serde_json::{Map, Value as Json, json};
use sonde_common::dynlog::{EventHeader, SlotRecord, status};

use super::plan::{Render, Scalar, VariantRender};
use crate::tables::Value;

/// One slot's record with its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub value: u64,
    pub status: u32,
    pub bytes: Vec<u8>,
}

impl Record {
    fn faulted(&self) -> bool {
        self.status & (status::FAULT | status::NO_ROOM) != 0
    }
}

const HEADER: usize = std::mem::size_of::<EventHeader>();
const RECORD: usize = std::mem::size_of::<SlotRecord>();

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits an event; None when it is malformed (counted by the caller, never trusted further).
pub fn parse_event(bytes: &[u8]) -> Option<(EventHeader, Vec<Record>)> {
    let header = EventHeader {
        cookie: u64_at(bytes, 0)?,
        ktime_ns: u64_at(bytes, 8)?,
        goid: u64_at(bytes, 16)?,
        depth: u64_at(bytes, 24)?,
        tgid: u32_at(bytes, 32)?,
        tid: u32_at(bytes, 36)?,
        data_len: u32_at(bytes, 40)?,
        n_slots: u32_at(bytes, 44)?,
    };
    let data = bytes.get(HEADER..HEADER + header.data_len as usize)?;
    let mut records = Vec::with_capacity(header.n_slots as usize);
    let mut at = 0usize;
    for _ in 0..header.n_slots {
        let value = u64_at(data, at)?;
        let len = u32_at(data, at + 8)? as usize;
        let status = u32_at(data, at + 12)?;
        let bytes = data.get(at + RECORD..at + RECORD + len)?.to_vec();
        records.push(Record {
            value,
            status,
            bytes,
        });
        at += RECORD + len.div_ceil(8) * 8;
    }
    Some((header, records))
}

fn bits(value: u64, size: u8, shift: u8) -> u64 {
    let v = value >> (u32::from(shift) * 8).min(63);
    if size >= 8 {
        v
    } else {
        v & ((1u64 << (u32::from(size) * 8)) - 1)
    }
}

fn signed(value: u64, size: u8) -> i64 {
    if size >= 8 || size == 0 {
        value as i64
    } else {
        let unused = 64 - u32::from(size) * 8;
        ((value << unused) as i64) >> unused
    }
}

fn float(value: u64, size: u8) -> f64 {
    if size == 4 {
        f64::from(f32::from_bits(value as u32))
    } else {
        f64::from_bits(value)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The column value of `render` from exactly `render.slots()` records.
pub fn column(render: &Render, records: &[Record]) -> Value {
    match render {
        Render::Scalar { kind, size, shift } => {
            let Some(r) = records.first().filter(|r| !r.faulted()) else {
                return Value::Null;
            };
            let v = bits(r.value, *size, *shift);
            match kind {
                Scalar::Int { signed: true } => Value::Int64(signed(v, *size)),
                Scalar::Int { signed: false } => Value::UInt64(v),
                Scalar::Bool => Value::Boolean(v & 0xff != 0),
                Scalar::Float => Value::Float64(float(v, *size)),
                Scalar::Address => Value::String(format!("{v:#x}")),
            }
        }
        Render::Named {
            size,
            shift,
            signed: is_signed,
            names,
        } => {
            let Some(r) = records.first().filter(|r| !r.faulted()) else {
                return Value::Null;
            };
            let v = bits(r.value, *size, *shift);
            Value::String(match names.iter().find(|(n, _)| *n == v) {
                Some((_, name)) => name.clone(),
                None if *is_signed => signed(v, *size).to_string(),
                None => v.to_string(),
            })
        }
        Render::Const(n) => Value::Int64(*n),
        Render::Str | Render::Hex => match records.first() {
            Some(r) if !r.faulted() => Value::String(if matches!(render, Render::Hex) {
                hex(&r.bytes)
            } else {
                String::from_utf8_lossy(&r.bytes).into_owned()
            }),
            _ => Value::Null,
        },
        Render::Enum { .. } => match json_of(render, records) {
            Json::Null => Value::Null,
            // A variant without fields (`None`) shows as its name, as strings show as text.
            Json::String(name) => Value::String(name),
            other => Value::String(other.to_string()),
        },
        _ => match json_of(render, records) {
            Json::Null => Value::Null,
            other => Value::String(other.to_string()),
        },
    }
}

fn json_of(render: &Render, records: &[Record]) -> Json {
    match render {
        Render::Scalar { .. }
        | Render::Named { .. }
        | Render::Const(_)
        | Render::Str
        | Render::Hex => match column(render, records) {
            Value::Int64(v) => json!(v),
            Value::UInt64(v) => json!(v),
            Value::Boolean(v) => json!(v),
            Value::Float64(v) => json!(v),
            Value::String(s) => json!(s),
            _ => Json::Null,
        },
        Render::Note(text) => json!(format!("<{text}>")),
        Render::Elems { kind, size } => {
            let Some(r) = records.first().filter(|r| !r.faulted()) else {
                return Json::Null;
            };
            let size = usize::from((*size).max(1));
            Json::Array(
                r.bytes
                    .chunks_exact(size)
                    .map(|c| {
                        let mut word = [0u8; 8];
                        word[..c.len().min(8)].copy_from_slice(&c[..c.len().min(8)]);
                        let v = u64::from_le_bytes(word);
                        match kind {
                            Scalar::Int { signed: true } => json!(signed(v, size as u8)),
                            Scalar::Int { signed: false } => json!(v),
                            Scalar::Bool => json!(v != 0),
                            Scalar::Float => json!(float(v, size as u8)),
                            Scalar::Address => json!(format!("{v:#x}")),
                        }
                    })
                    .collect(),
            )
        }
        Render::Struct { fields, truncated } => {
            let n: usize = fields.iter().map(|(_, r)| r.slots()).sum();
            if n > 0 && records.iter().take(n).all(Record::faulted) {
                return Json::Null;
            }
            let mut map = Map::new();
            let mut at = 0;
            for (name, r) in fields {
                let k = r.slots();
                let part = records.get(at..at + k).unwrap_or(&[]);
                map.insert(name.clone(), json_of(r, part));
                at += k;
            }
            if *truncated {
                map.insert("…".into(), json!("more fields not captured"));
            }
            Json::Object(map)
        }
        Render::Enum { discr, variants } => enum_json(discr.as_deref(), variants, records),
        Render::Iface { types } => {
            let [tab, data, text] = records else {
                return Json::Null;
            };
            if tab.faulted() || tab.value == 0 {
                return Json::Null;
            }
            let mut map = Map::new();
            match types.get(&tab.value) {
                Some((name, stringy)) => {
                    map.insert("type".into(), json!(name));
                    if *stringy && !text.faulted() {
                        map.insert("value".into(), json!(String::from_utf8_lossy(&text.bytes)));
                    } else if !data.faulted() {
                        map.insert("data".into(), json!(format!("{:#x}", data.value)));
                    }
                }
                None => {
                    map.insert("type".into(), json!(format!("{:#x}", tab.value)));
                }
            }
            Json::Object(map)
        }
    }
}

/// A Rust enum as serde shows one (externally tagged): `"None"` for a variant without fields,
/// `{"Some": "abc"}` for one with one tuple field, `{"Rect": [3, 4]}` for several and
/// `{"Circle": {"r": 2}}` for named fields. Null when the discriminant could not be read.
fn enum_json(discr: Option<&Render>, variants: &[VariantRender], records: &[Record]) -> Json {
    let discr_slots = discr.map_or(0, Render::slots);
    let value = match discr {
        Some(d) => match column(d, records.get(..discr_slots).unwrap_or(&[])) {
            Value::UInt64(v) => Some(v),
            Value::Int64(v) => Some(v as u64),
            _ => return Json::Null,
        },
        None => None,
    };
    let mut at = discr_slots;
    let (mut named, mut default) = (None, None);
    for v in variants {
        if v.value.is_some() && v.value == value {
            named.get_or_insert((v, at));
        } else if v.value.is_none() {
            default.get_or_insert((v, at));
        }
        at += v.slots();
    }
    let only = match variants {
        [v] => Some((v, discr_slots)),
        _ => None,
    };
    let Some((variant, at)) = named.or(default).or(only) else {
        return json!(format!(
            "<discriminant {:#x} names no variant>",
            value.unwrap_or(0)
        ));
    };
    if variant.fields.is_empty() {
        return json!(variant.name);
    }
    let records = records.get(at..at + variant.slots()).unwrap_or(&[]);
    let mut at = 0;
    let mut values = Vec::with_capacity(variant.fields.len());
    for (name, r) in &variant.fields {
        let k = r.slots();
        values.push((name, json_of(r, records.get(at..at + k).unwrap_or(&[]))));
        at += k;
    }
    let payload = if !variant.tuple {
        Json::Object(values.into_iter().map(|(n, v)| (n.clone(), v)).collect())
    } else if values.len() == 1 {
        values.remove(0).1
    } else {
        Json::Array(values.into_iter().map(|(_, v)| v).collect())
    };
    let mut map = Map::new();
    map.insert(variant.name.clone(), payload);
    Json::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: u64) -> Record {
        Record {
            value,
            status: 0,
            bytes: Vec::new(),
        }
    }

    #[test]
    fn narrow_signed_integers_are_sign_extended_from_their_width() {
        let r = Render::Scalar {
            kind: Scalar::Int { signed: true },
            size: 1,
            shift: 0,
        };
        assert_eq!(column(&r, &[rec(0xffff_fff8)]), Value::Int64(-8));
        let r = Render::Scalar {
            kind: Scalar::Int { signed: true },
            size: 4,
            shift: 4,
        };
        assert_eq!(column(&r, &[rec(0xffff_fffe_0000_0001)]), Value::Int64(-2));
    }

    fn text(s: &str) -> Record {
        Record {
            value: 0,
            status: 0,
            bytes: s.as_bytes().to_vec(),
        }
    }

    fn u32_field(name: &str) -> (String, Render) {
        let r = Render::Scalar {
            kind: Scalar::Int { signed: false },
            size: 4,
            shift: 0,
        };
        (name.to_owned(), r)
    }

    /// `Option<String>` with `None` as a niche value, and a user enum with every kind of variant.
    fn option_and_shape() -> (Render, Render) {
        let discr = |size| {
            Some(Box::new(Render::Scalar {
                kind: Scalar::Int { signed: false },
                size,
                shift: 0,
            }))
        };
        let option = Render::Enum {
            discr: discr(8),
            variants: vec![
                VariantRender {
                    name: "None".into(),
                    value: Some(u64::MAX),
                    tuple: false,
                    fields: Vec::new(),
                },
                VariantRender {
                    name: "Some".into(),
                    value: None,
                    tuple: true,
                    fields: vec![("__0".into(), Render::Str)],
                },
            ],
        };
        let variant = |name: &str, value, tuple, fields| VariantRender {
            name: name.into(),
            value: Some(value),
            tuple,
            fields,
        };
        let shape = Render::Enum {
            discr: discr(4),
            variants: vec![
                variant("Circle", 0, false, vec![u32_field("r")]),
                variant("Rect", 1, true, vec![u32_field("__0"), u32_field("__1")]),
                variant("Empty", 2, false, Vec::new()),
            ],
        };
        (option, shape)
    }

    #[test]
    fn a_rust_enum_shows_the_variant_its_discriminant_names_as_serde_would() {
        let (option, shape) = option_and_shape();
        assert_eq!(option.slots(), 2);
        // A capacity is not the niche: the default variant, with the String's text.
        assert_eq!(
            column(&option, &[rec(32), text("abc")]),
            Value::String(r#"{"Some":"abc"}"#.into())
        );
        // The niche: None, whatever the (garbage) String read gave.
        let garbage = Record {
            value: 0,
            status: status::FAULT,
            bytes: Vec::new(),
        };
        assert_eq!(
            column(&option, &[rec(u64::MAX), garbage.clone()]),
            Value::String("None".into())
        );
        // Only the discriminant's own bytes count.
        let rects = [rec(0x7777_0000_0001), rec(9), rec(3), rec(4)];
        assert_eq!(
            column(&shape, &rects),
            Value::String(r#"{"Rect":[3,4]}"#.into())
        );
        assert_eq!(
            column(&shape, &[rec(0), rec(2), rec(0), rec(0)]),
            Value::String(r#"{"Circle":{"r":2}}"#.into())
        );
        assert_eq!(
            column(&shape, &[rec(2), rec(0), rec(0), rec(0)]),
            Value::String("Empty".into())
        );
        // Inside a struct a variant without fields is a JSON string.
        let outer = Render::Struct {
            fields: vec![("s".into(), shape.clone())],
            truncated: false,
        };
        assert_eq!(
            column(&outer, &[rec(2), rec(0), rec(0), rec(0)]),
            Value::String(r#"{"s":"Empty"}"#.into())
        );
        // An unreadable discriminant is null; an unknown one says so.
        assert_eq!(
            column(&shape, &[garbage, rec(0), rec(0), rec(0)]),
            Value::Null
        );
        assert_eq!(
            column(&shape, &[rec(7), rec(0), rec(0), rec(0)]),
            Value::String("<discriminant 0x7 names no variant>".into())
        );
    }

    #[test]
    fn a_fieldless_rust_enum_shows_its_variant_name() {
        let r = Render::Named {
            size: 1,
            shift: 0,
            signed: false,
            names: vec![(0, "Red".into()), (5, "Green".into())],
        };
        assert_eq!(column(&r, &[rec(0x1105)]), Value::String("Green".into()));
        assert_eq!(column(&r, &[rec(3)]), Value::String("3".into()));
        assert_eq!(r.column_type(), crate::tables::ColumnType::String);
    }

    #[test]
    fn a_faulted_read_is_null() {
        let r = Render::Str;
        let rec = Record {
            value: 0,
            status: status::FAULT,
            bytes: Vec::new(),
        };
        assert_eq!(column(&r, &[rec]), Value::Null);
    }

    #[test]
    fn an_event_splits_into_its_records() {
        let mut bytes = vec![0u8; HEADER];
        bytes[0] = 7; // cookie
        bytes[40] = (RECORD * 2 + 8) as u8; // data_len
        bytes[44] = 2; // n_slots
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(b"abc\0\0\0\0\0");
        let (h, records) = parse_event(&bytes).unwrap();
        assert_eq!(h.cookie, 7);
        assert_eq!(records[0].value, 5);
        assert_eq!(records[1].bytes, b"abc");
    }
}
