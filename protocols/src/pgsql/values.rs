//! Bound parameter values as records show them: `$1='7', $2=NULL, $3=42`. Text-format values are
//! quoted as sent; binary ones are decoded by the parameter's type — declared in the Parse, or
//! named by the server's ParameterDescription when the driver left it open, as pgx does — with
//! `postgres-protocol`'s decoders, arrays of them too (`{1,2,3}`: asyncpg and pgx send
//! `ANY($1::int[])` this way); other binary values are shown in hex.
//!
//! Dates and timestamps are formatted by hand (days to a civil date): the decoders give days and
//! microseconds since 2000-01-01, and a date crate would be a dependency for ten lines.

use fallible_iterator::FallibleIterator;
use postgres_protocol::types as pg;

use crate::secret::shapes;

/// Type OIDs (pg_type.oid) decoded here.
mod oid {
    pub const BOOL: u32 = 16;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;

    /// Arrays of the types above (`_int4`, …), whose binary form names their element type.
    pub const ARRAYS: [u32; 18] = [
        199, 1000, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1021, 1022, 1028, 1115, 1182, 1185,
        2951, 3807, 143,
    ];
}

/// Elements (and inner arrays) of an array shown; the rest is `…`.
const MAX_ELEMENTS: usize = 64;
/// PostgreSQL's MAXDIM: an array claiming more dimensions is not one the server sent.
const MAX_DIMENSIONS: usize = 6;

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `$1='7', $2=NULL, $3=42`, at most `cap` bytes; the parameters numbered in `secret` (ascending)
/// as `<redacted>`, and tokens in the others when `redact` ([`shapes`]); `truncated`: parameters
/// beyond these were not kept (and the last one may be cut).
pub(super) fn render_params(
    params: &[Option<Vec<u8>>],
    formats: &[i16],
    types: &[u32],
    secret: &[u32],
    redact: bool,
    truncated: bool,
    cap: usize,
) -> String {
    let mut out = String::new();
    for (i, value) in params.iter().enumerate() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        // One format code applies to all; otherwise one per parameter.
        let format = match formats {
            [] => 0,
            [f] => *f,
            fs => fs.get(i).copied().unwrap_or(0),
        };
        let rendered = match value {
            None => "NULL".to_string(),
            Some(_) if crate::secret::secret_param(secret, i) => crate::REDACTED.to_string(),
            Some(v) if format == 0 => quoted(v),
            Some(v) => binary(v, types.get(i).copied().unwrap_or(0)),
        };
        let rendered = if redact {
            without_tokens(rendered, truncated && i + 1 == params.len())
        } else {
            rendered
        };
        out.push_str(&format!("${}={rendered}", i + 1));
        if out.len() > cap {
            break;
        }
    }
    if truncated {
        out.push_str(", …");
    }
    crate::cut(out, cap)
}

/// A rendered value with its tokens redacted. A `cut` one was not kept whole: a quoted value's
/// text ends before its closing quote, where a token the cut shortened is redacted all the same.
fn without_tokens(rendered: String, cut: bool) -> String {
    let inside = match rendered.strip_suffix('\'') {
        Some(inside) if cut => inside,
        _ => return shapes::redacted(&rendered, false).unwrap_or(rendered),
    };
    match shapes::redacted(inside, true) {
        Some(mut redacted) => {
            redacted.push('\'');
            redacted
        }
        None => rendered,
    }
}

fn quoted(v: &[u8]) -> String {
    format!("'{}'", String::from_utf8_lossy(v))
}

/// A binary value of type `oid` (0: unknown); hex when the type is not decoded here or the value
/// does not fit it (cut to what was kept).
fn binary(v: &[u8], type_oid: u32) -> String {
    let decoded = match type_oid {
        oid::BOOL => pg::bool_from_sql(v).ok().map(|b| b.to_string()),
        oid::INT2 => pg::int2_from_sql(v).ok().map(|n| n.to_string()),
        oid::INT4 => pg::int4_from_sql(v).ok().map(|n| n.to_string()),
        oid::INT8 => pg::int8_from_sql(v).ok().map(|n| n.to_string()),
        oid::OID => pg::oid_from_sql(v).ok().map(|n| n.to_string()),
        oid::FLOAT4 => pg::float4_from_sql(v).ok().map(|n| n.to_string()),
        oid::FLOAT8 => pg::float8_from_sql(v).ok().map(|n| n.to_string()),
        oid::TEXT
        | oid::VARCHAR
        | oid::NAME
        | oid::BPCHAR
        | oid::JSON
        | oid::XML
        | oid::UNKNOWN => Some(quoted(v)),
        // jsonb: a version byte (1), then the text.
        oid::JSONB => v
            .split_first()
            .filter(|(version, _)| **version == 1)
            .map(|(_, text)| quoted(text)),
        oid::UUID => pg::uuid_from_sql(v).ok().map(uuid),
        oid::DATE => pg::date_from_sql(v).ok().map(|d| format!("'{}'", date(d))),
        oid::TIMESTAMP => pg::timestamp_from_sql(v)
            .ok()
            .map(|t| format!("'{}'", timestamp(t))),
        // Sent in UTC.
        oid::TIMESTAMPTZ => pg::timestamp_from_sql(v)
            .ok()
            .map(|t| format!("'{}+00'", timestamp(t))),
        t if oid::ARRAYS.contains(&t) => array(v),
        _ => None,
    };
    decoded.unwrap_or_else(|| {
        let hex: String = v.iter().take(32).map(|b| format!("{b:02x}")).collect();
        let more = if v.len() > 32 { "…" } else { "" };
        format!("\\x{hex}{more}")
    })
}

/// A binary array as `{1,2,NULL}` (nested braces per dimension), its elements decoded by their
/// type; None when it does not parse (cut short).
fn array(v: &[u8]) -> Option<String> {
    let array = pg::array_from_sql(v).ok()?;
    let element = array.element_type();
    // Arrays do not nest as elements (a second dimension does that).
    if oid::ARRAYS.contains(&element) {
        return None;
    }
    let dims: Vec<usize> = array
        .dimensions()
        .map(|d| Ok(usize::try_from(d.len).unwrap_or(0)))
        .collect()
        .ok()?;
    if dims.len() > MAX_DIMENSIONS {
        return None;
    }
    let mut out = String::new();
    write_array(&mut out, &dims, &mut array.values(), element, &mut 0)?;
    Some(out)
}

/// Writes an array of dimensions `dims` (the outermost first), its elements taken from `values`
/// and decoded as type `element`; `shown` counts the elements and inner arrays written, at most
/// [`MAX_ELEMENTS`] in all: inner arrays count too, since those of an empty dimension take no
/// bytes (`[2147483647][0]` is 2^31 `{}` from a 28-byte value).
fn write_array(
    out: &mut String,
    dims: &[usize],
    values: &mut pg::ArrayValues<'_>,
    element: u32,
    shown: &mut usize,
) -> Option<()> {
    out.push('{');
    let Some((&len, inner)) = dims.split_first() else {
        out.push('}');
        return Some(());
    };
    for i in 0..len {
        if *shown >= MAX_ELEMENTS {
            out.push('…');
            break;
        }
        if i > 0 {
            out.push(',');
        }
        *shown += 1;
        if inner.is_empty() {
            match values.next().ok()?? {
                Some(e) => out.push_str(&binary(e, element)),
                None => out.push_str("NULL"),
            }
        } else {
            write_array(out, inner, values, element, shown)?;
        }
    }
    out.push('}');
    Some(())
}

fn uuid(b: [u8; 16]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "'{}-{}-{}-{}-{}'",
        hex[..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..].concat()
    )
}

/// Days since 2000-01-01 as `2026-12-06`.
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let (y, m, d) = civil(i64::from(d) + PG_EPOCH_DAYS);
            format!("{y:04}-{m:02}-{d:02}")
        }
    }
}

/// Microseconds since 2000-01-01 00:00 as `2026-12-06 22:27:28.123456`.
fn timestamp(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        t => {
            let (days, of_day) = (t.div_euclid(MICROS_PER_DAY), t.rem_euclid(MICROS_PER_DAY));
            let (y, m, d) = civil(days + PG_EPOCH_DAYS);
            let secs = of_day / 1_000_000;
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                of_day % 1_000_000
            )
        }
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar: the
/// era-based conversion (400-year eras of 146,097 days).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary array of `dims` with elements of type `element` (None: NULL).
    fn array_bytes(dims: &[i32], element: u32, values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        b.extend_from_slice(&i32::from(values.iter().any(Option::is_none)).to_be_bytes());
        b.extend_from_slice(&element.to_be_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
            b.extend_from_slice(&1i32.to_be_bytes());
        }
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn binary_arrays_are_decoded_element_by_element() {
        let one = 1i32.to_be_bytes();
        let two = 2i32.to_be_bytes();
        let ints = array_bytes(&[2], oid::INT4, &[Some(&one), Some(&two)]);
        assert_eq!(binary(&ints, 1007), "{1,2}");
        let texts = array_bytes(&[3], oid::TEXT, &[Some(b"a"), None, Some(b"it's")]);
        assert_eq!(binary(&texts, 1009), "{'a',NULL,'it's'}");
        let square = array_bytes(
            &[2, 2],
            oid::INT4,
            &[Some(&one), Some(&two), Some(&two), Some(&one)],
        );
        assert_eq!(binary(&square, 1007), "{{1,2},{2,1}}");
        assert_eq!(binary(&array_bytes(&[], oid::INT4, &[]), 1007), "{}");
        let many: Vec<[u8; 4]> = (0..100i32).map(i32::to_be_bytes).collect();
        let many: Vec<Option<&[u8]>> = many.iter().map(|v| Some(&v[..])).collect();
        let shown = binary(&array_bytes(&[100], oid::INT4, &many), 1007);
        assert!(
            shown.starts_with("{0,1,2,") && shown.ends_with(",63…}"),
            "{shown}"
        );
        // Inner arrays count towards what is shown: an empty inner dimension takes no bytes.
        let hollow = binary(&array_bytes(&[i32::MAX, 0], oid::INT4, &[]), 1007);
        assert!(hollow.len() < 200 && hollow.ends_with(",{}…}"), "{hollow}");
        let deep = binary(&array_bytes(&[i32::MAX; 7], oid::INT4, &[]), 1007);
        assert!(deep.starts_with("\\x"), "{deep}");
        let nested = binary(&array_bytes(&[1], 1007, &[Some(&ints)]), 1007);
        assert!(nested.starts_with("\\x"), "{nested}");
        // Cut short by the capture: hex, as any value that does not parse.
        assert_eq!(
            binary(&ints[..22], 1007),
            format!("\\x{}", hex(&ints[..22]))
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn binary_values_are_decoded_by_type() {
        assert_eq!(binary(&[0, 0, 0, 41], oid::INT4), "41");
        assert_eq!(binary(&[0xff, 0xfe], oid::INT2), "-2");
        assert_eq!(binary(&[1], oid::BOOL), "true");
        assert_eq!(binary(&1.5f64.to_be_bytes(), oid::FLOAT8), "1.5");
        assert_eq!(binary(b"n0", oid::TEXT), "'n0'");
        assert_eq!(binary(&[0, 0, 3, 0xef], oid::OID), "1007");
        assert_eq!(binary(b"\x01{\"a\":1}", oid::JSONB), "'{\"a\":1}'");
        assert_eq!(
            binary(&[0x12; 16], oid::UUID),
            "'12121212-1212-1212-1212-121212121212'"
        );
        // 2026-12-06 is 9836 days after 2000-01-01.
        assert_eq!(binary(&9836i32.to_be_bytes(), oid::DATE), "'2026-12-06'");
        assert_eq!(binary(&(-1i32).to_be_bytes(), oid::DATE), "'1999-12-31'");
        let t = 9836 * MICROS_PER_DAY + ((22 * 60 + 27) * 60 + 28) * 1_000_000 + 123_456;
        assert_eq!(
            binary(&t.to_be_bytes(), oid::TIMESTAMPTZ),
            "'2026-12-06 22:27:28.123456+00'"
        );
        assert_eq!(
            binary(&i64::MAX.to_be_bytes(), oid::TIMESTAMP),
            "'infinity'"
        );
        // Not the type's size (cut, or another type than declared), or a type not decoded: hex.
        assert_eq!(binary(&[0, 0, 41], oid::INT4), "\\x000029");
        assert_eq!(binary(&[0xab; 40], 0), format!("\\x{}…", "ab".repeat(32)));
    }

    #[test]
    fn civil_dates_across_eras_and_leap_days() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(PG_EPOCH_DAYS + 59), (2000, 2, 29));
        assert_eq!(civil(-719_468), (0, 3, 1));
        assert_eq!(civil(2_932_896), (9999, 12, 31));
    }
}
