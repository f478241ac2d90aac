//! MySQL/MariaDB client/server protocol packets: framing, commands, OK/ERR/EOF.
//!
//! Hand-written: `mysql_common` (the Rust reference) is a client's codec with a large dependency
//! tree (bigdecimal, chrono, flate2, regex, …) and expects whole, valid packets; what a tracer
//! needs is the 4-byte framing, the command byte and a few fields, read from possibly truncated
//! packets without trusting any length.

use crate::frames::Header;

/// Payload length marking a packet continued in the next one (a payload of 16 MiB or more).
pub(super) const CONTINUED: u32 = 0xff_ffff;

/// Capability flags read from the client's handshake response.
pub(super) const CLIENT_SSL: u32 = 0x800;
pub(super) const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
/// MySQL 8: a result set's column count is followed by a byte saying whether its column
/// definitions follow (`resultset_metadata=NONE` leaves them out).
const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
/// Cleared by MariaDB's clients to say the handshake response carries MariaDB's extended
/// capabilities (in MySQL the same bit is CLIENT_LONG_PASSWORD, set by its clients).
const CLIENT_MYSQL: u32 = 1;
/// MariaDB's extended capability: the server leaves out the column definitions of a prepared
/// statement's result when they did not change since the client last got them (Connector/J 3,
/// go-sql-driver 1.9 and later), saying so in the byte after the column count.
const MARIADB_CLIENT_CACHE_METADATA: u32 = 1 << 4;
/// Where MariaDB's extended capabilities are in the handshake response: after the capability
/// flags, the maximum packet size, the character set and 19 bytes of filler.
const EXTENDED_CAPABILITIES_AT: usize = 28;
/// The handshake response names a database to use.
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
/// The auth response is prefixed with its length in one byte.
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
/// The auth response is prefixed with a length-encoded integer.
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
/// Where the user name starts in a HandshakeResponse41: after the capability flags, the maximum
/// packet size, the character set and 23 bytes of filler.
const HANDSHAKE_USER_AT: usize = 32;

/// Status flag: another result set follows this one.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

pub(super) fn payload_len(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, 0]))
}

/// Frame header for a packet; `cap` bounds what is kept of statement text and parameters.
pub(super) fn header(buf: &[u8], from_client: bool, cap: usize) -> Result<Header, &'static str> {
    let Some(len) = payload_len(buf) else {
        return Ok(Header::Incomplete);
    };
    let total = u64::from(len) + 4;
    if len == 0 {
        return Ok(Header::Frame {
            len: total,
            keep: 4,
        });
    }
    let Some(&first) = buf.get(4) else {
        return Ok(Header::Incomplete);
    };
    let keep = match (from_client, first) {
        (true, Command::QUERY | Command::STMT_PREPARE | Command::STMT_EXECUTE) => 4 + cap + 64,
        (true, _) => 4 + 128,
        (false, 0xff) => 4 + 512,
        (false, _) => 4 + 128,
    };
    Ok(Header::Frame { len: total, keep })
}

/// Could a chunk starting with these bytes start a command (client) or a response (server)?
pub(super) fn starts_packet(data: &[u8], from_client: bool) -> bool {
    let (Some(len), Some(&seq), Some(&first)) = (payload_len(data), data.get(3), data.get(4))
    else {
        return false;
    };
    if from_client {
        seq == 0 && len >= 1 && Command::name(first).is_some()
    } else {
        seq == 1 && len >= 1
    }
}

/// Command bytes and their names.
pub(super) struct Command;

impl Command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    /// Not sent by clients: MySQL's name for the connection phase, given to the handshake
    /// response's record.
    pub const CONNECT: u8 = 0x0b;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_FETCH: u8 = 0x1c;
    /// MariaDB's batch: many rows of parameters for one statement.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;

    pub fn name(cmd: u8) -> Option<&'static str> {
        Some(match cmd {
            0x00 => "COM_SLEEP",
            0x01 => "COM_QUIT",
            0x02 => "COM_INIT_DB",
            0x03 => "COM_QUERY",
            0x04 => "COM_FIELD_LIST",
            0x05 => "COM_CREATE_DB",
            0x06 => "COM_DROP_DB",
            0x07 => "COM_REFRESH",
            0x08 => "COM_SHUTDOWN",
            0x09 => "COM_STATISTICS",
            0x0a => "COM_PROCESS_INFO",
            0x0b => "COM_CONNECT",
            0x0c => "COM_PROCESS_KILL",
            0x0d => "COM_DEBUG",
            0x0e => "COM_PING",
            0x11 => "COM_CHANGE_USER",
            0x12 => "COM_BINLOG_DUMP",
            0x16 => "COM_STMT_PREPARE",
            0x17 => "COM_STMT_EXECUTE",
            0x18 => "COM_STMT_SEND_LONG_DATA",
            0x19 => "COM_STMT_CLOSE",
            0x1a => "COM_STMT_RESET",
            0x1b => "COM_SET_OPTION",
            0x1c => "COM_STMT_FETCH",
            0x1f => "COM_RESET_CONNECTION",
            0xfa => "COM_STMT_BULK_EXECUTE",
            _ => return None,
        })
    }
}

/// A length-encoded integer at the cursor.
pub(super) fn lenenc(c: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = c.split_first()?;
    let n = match first {
        0..=0xfa => {
            *c = rest;
            return Some(first.into());
        }
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..n)?;
    *c = &rest[n..];
    Some(
        bytes
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    )
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Does the client of this handshake response (payload) get column counts that say whether
/// definitions follow?
pub(super) fn metadata_optional(response: &[u8], caps: u32) -> bool {
    let mariadb_cache = caps & CLIENT_MYSQL == 0
        && le_u32(response, EXTENDED_CAPABILITIES_AT)
            .is_some_and(|ext| ext & MARIADB_CLIENT_CACHE_METADATA != 0);
    mariadb_cache || caps & CLIENT_OPTIONAL_RESULTSET_METADATA != 0
}

/// What a HandshakeResponse41 (payload) says of the login: the user, whether it carries an
/// auth response (a password's hash, or with `mysql_clear_password` the password itself), and the
/// database asked for. None if it is cut before the user's end.
pub(super) struct Login<'a> {
    pub user: &'a [u8],
    pub auth: bool,
    pub database: Option<&'a [u8]>,
}

pub(super) fn login(payload: &[u8], caps: u32) -> Option<Login<'_>> {
    let rest = payload.get(HANDSHAKE_USER_AT..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    let (user, mut c) = (&rest[..end], &rest[end + 1..]);
    let auth_len = if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        lenenc(&mut c)
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        c.split_first().map(|(n, rest)| {
            c = rest;
            u64::from(*n)
        })
    } else {
        // A NUL-terminated auth response (pre-4.1 clients).
        let n = c.iter().position(|b| *b == 0).unwrap_or(c.len());
        let n64 = n as u64;
        c = c.get(n..).unwrap_or_default();
        Some(n64)
    };
    let auth = auth_len.is_some_and(|n| n > 0);
    let database = (caps & CLIENT_CONNECT_WITH_DB != 0)
        .then(|| {
            let skip = usize::try_from(auth_len?).ok()?;
            let rest = c.get(skip..)?;
            // The NUL after the NUL-terminated auth response of a pre-4.1 client.
            let rest =
                if caps & (CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) == 0 {
                    rest.get(1..)?
                } else {
                    rest
                };
            let end = rest.iter().position(|b| *b == 0)?;
            Some(&rest[..end])
        })
        .flatten()
        .filter(|db| !db.is_empty());
    Some(Login {
        user,
        auth,
        database,
    })
}

pub(super) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// An OK packet (header 0x00, or 0xFE when it replaces EOF): affected rows, more-results flag, info.
pub(super) struct Ok {
    pub affected_rows: u64,
    pub more_results: bool,
    pub info: String,
}

/// The info text is length-prefixed: the protocol documents it as the rest of the packet for
/// clients without CLIENT_SESSION_TRACK, but the server prefixes it with its length either way
/// (MariaDB to PyMySQL, which does not ask for session tracking: `&Records: 2 …`, `&` being 38).
/// A prefix that does not fit the packet is taken as text.
pub(super) fn ok(payload: &[u8]) -> Option<Ok> {
    let mut c = payload.get(1..)?;
    let affected_rows = lenenc(&mut c)?;
    let _last_insert_id = lenenc(&mut c)?;
    let status = le_u16(c, 0)?;
    let mut rest = c.get(4..).unwrap_or_default();
    let mut peek = rest;
    if let Some(n) = lenenc(&mut peek).and_then(|n| usize::try_from(n).ok())
        && n <= peek.len()
    {
        rest = &peek[..n];
    }
    let info = String::from_utf8_lossy(rest);
    Some(Ok {
        affected_rows,
        more_results: status & SERVER_MORE_RESULTS_EXISTS != 0,
        info: info.trim_end_matches('\0').to_string(),
    })
}

/// Payload bytes looked at for the packet ending a result set (an ERR's are kept up to this too).
const MAX_END_PAYLOAD: usize = 512;

/// The payload of the packet that ends a chunk taken from the middle of the stream (after lost
/// bytes), when that packet ends an answer: an EOF, or the OK that replaces it, with no more
/// results to come (a row never starts with 0xFE below 16 MiB), or an ERR. The packet must end
/// exactly where the chunk does: the server sends nothing after it until the next command.
pub(super) fn answer_end(data: &[u8]) -> Option<&[u8]> {
    (1..=MAX_END_PAYLOAD).find_map(|len| {
        let packet = &data[data.len().checked_sub(4 + len)?..];
        if payload_len(packet)? as usize != len {
            return None;
        }
        let payload = &packet[4..];
        match payload[0] {
            0xfe if !terminal_more_results(payload) => Some(payload),
            0xff if payload.get(3) == Some(&b'#') => Some(payload),
            _ => None,
        }
    })
}

/// A legacy EOF packet: 0xFE, warnings, status — exactly 5 bytes.
pub(super) fn is_eof(payload: &[u8]) -> bool {
    payload.len() == 5 && payload[0] == 0xfe
}

/// Does this EOF or OK-as-EOF say another result set follows?
pub(super) fn terminal_more_results(payload: &[u8]) -> bool {
    if is_eof(payload) {
        le_u16(payload, 3).is_some_and(|s| s & SERVER_MORE_RESULTS_EXISTS != 0)
    } else {
        ok(payload).is_some_and(|o| o.more_results)
    }
}

/// `1146 (42S02): Table 'x' doesn't exist`.
pub(super) fn err(payload: &[u8]) -> String {
    let code = le_u16(payload, 1).unwrap_or(0);
    let rest = payload.get(3..).unwrap_or_default();
    let (state, msg) = match rest.split_first() {
        Some((b'#', after)) if after.len() >= 5 => (
            String::from_utf8_lossy(&after[..5]).into_owned(),
            &after[5..],
        ),
        _ => (String::new(), rest),
    };
    let msg = String::from_utf8_lossy(msg);
    if state.is_empty() {
        format!("{code}: {msg}")
    } else {
        format!("{code} ({state}): {msg}")
    }
}

/// A COM_STMT_PREPARE OK: statement id, columns, parameters.
pub(super) struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
}

pub(super) fn prepare_ok(payload: &[u8]) -> Option<PrepareOk> {
    (payload.first() == Some(&0)).then_some(())?;
    Some(PrepareOk {
        statement_id: le_u32(payload, 1)?,
        columns: le_u16(payload, 5)?,
        params: le_u16(payload, 7)?,
    })
}

/// Parameters of a COM_STMT_EXECUTE payload rendered as text (`7, 'seven', NULL`), those numbered
/// in `secret` (from 1, ascending) as `<redacted>`.
/// `types` are the statement's parameter types from an earlier execute; updated when the packet
/// carries new ones. None when the packet is cut short before the values.
pub(super) fn execute_params(
    payload: &[u8],
    count: u16,
    types: &mut Vec<(u8, bool)>,
    secret: &[u32],
) -> Option<String> {
    let n = usize::from(count);
    if n == 0 {
        return None;
    }
    let mut c = payload.get(10..)?;
    let bitmap = c.get(..n.div_ceil(8))?;
    c = &c[n.div_ceil(8)..];
    let (&bound, rest) = c.split_first()?;
    c = rest;
    if bound == 1 {
        read_types(&mut c, n, types)?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push("NULL".to_string());
            continue;
        }
        let (ty, unsigned) = *types.get(i)?;
        let value = binary_value(&mut c, ty, unsigned)?;
        out.push(unless_secret(value, i, secret));
    }
    Some(out.join(", "))
}

/// Bulk flag: the parameters' types follow the flags.
const BULK_SEND_TYPES: u16 = 128;

/// The rows of a COM_STMT_BULK_EXECUTE payload (MariaDB) rendered as text, `(1, 'a'), (2, NULL)`,
/// the parameters numbered in `secret` (from 1, ascending) as `<redacted>`, until `cap` bytes or
/// the end of what was kept (then `…`). `types` as for [`execute_params`].
pub(super) fn bulk_params(
    payload: &[u8],
    count: u16,
    types: &mut Vec<(u8, bool)>,
    secret: &[u32],
    cap: usize,
) -> Option<String> {
    let n = usize::from(count);
    if n == 0 {
        return None;
    }
    let flags = le_u16(payload, 5)?;
    let mut c = payload.get(7..)?;
    if flags & BULK_SEND_TYPES != 0 {
        read_types(&mut c, n, types)?;
    }
    if types.len() < n {
        return None;
    }
    let mut out = String::new();
    while !c.is_empty() {
        let row = (out.len() < cap)
            .then(|| bulk_row(&mut c, &types[..n], secret))
            .flatten();
        if !out.is_empty() {
            out.push_str(", ");
        }
        match row {
            Some(row) => out.push_str(&row),
            // Past the cap, or cut short inside a row.
            None => {
                out.push('…');
                break;
            }
        }
    }
    Some(out)
}

/// One row of a bulk execute at the cursor, `(1, 'a', NULL)`; None when it is cut short.
fn bulk_row(c: &mut &[u8], types: &[(u8, bool)], secret: &[u32]) -> Option<String> {
    let mut row = Vec::with_capacity(types.len());
    for (i, &(ty, unsigned)) in types.iter().enumerate() {
        let (&indicator, rest) = c.split_first()?;
        *c = rest;
        row.push(match indicator {
            0 => unless_secret(binary_value(c, ty, unsigned)?, i, secret),
            1 => "NULL".to_string(),
            2 => "DEFAULT".to_string(),
            _ => "IGNORE".to_string(),
        });
    }
    Some(format!("({})", row.join(", ")))
}

/// The `count` parameter types (type byte, unsigned flag) at the cursor, into `types`.
fn read_types(c: &mut &[u8], count: usize, types: &mut Vec<(u8, bool)>) -> Option<()> {
    types.clear();
    for _ in 0..count {
        let t = c.get(..2)?;
        types.push((t[0], t[1] & 0x80 != 0));
        *c = &c[2..];
    }
    Some(())
}

/// Parameter `i`'s rendered value, or `<redacted>` when its number (from 1) is in `secret`.
fn unless_secret(value: String, i: usize, secret: &[u32]) -> String {
    if crate::secret::secret_param(secret, i) {
        crate::REDACTED.to_string()
    } else {
        value
    }
}

fn binary_value(c: &mut &[u8], ty: u8, unsigned: bool) -> Option<String> {
    let take = |c: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let v = c.get(..n)?.to_vec();
        *c = &c[n..];
        Some(v)
    };
    let int = |b: &[u8]| {
        let mut le = [0u8; 8];
        le[..b.len()].copy_from_slice(b);
        let u = u64::from_le_bytes(le);
        if unsigned {
            u.to_string()
        } else {
            // Sign-extend from the value's width.
            let shift = 64 - 8 * b.len() as u32;
            (((u << shift) as i64) >> shift).to_string()
        }
    };
    Some(match ty {
        0x06 => "NULL".to_string(),
        0x01 => int(&take(c, 1)?),
        0x02 | 0x0d => int(&take(c, 2)?),
        0x03 | 0x09 => int(&take(c, 4)?),
        0x08 => int(&take(c, 8)?),
        0x04 => f32::from_le_bytes(take(c, 4)?.try_into().ok()?).to_string(),
        0x05 => f64::from_le_bytes(take(c, 8)?.try_into().ok()?).to_string(),
        0x07 | 0x0a | 0x0b | 0x0c => {
            let (&len, rest) = c.split_first()?;
            *c = rest;
            let v = take(c, usize::from(len))?;
            temporal(ty, &v).unwrap_or_else(|| format!("<temporal {} bytes>", v.len()))
        }
        _ => {
            let len = usize::try_from(lenenc(c)?).ok()?;
            let v = take(c, len)?;
            match std::str::from_utf8(&v) {
                Ok(s) if !s.chars().any(char::is_control) => format!("'{s}'"),
                _ => format!("<binary {} bytes>", v.len()),
            }
        }
    })
}

/// A binary DATE, DATETIME or TIMESTAMP (`'2026-12-06 22:27:28.123456'`; its length says which
/// parts are sent) or TIME (`'-26:27:28'`: days count as hours).
fn temporal(t: u8, v: &[u8]) -> Option<String> {
    let micros = |at: usize| {
        let us = u32::from_le_bytes(v.get(at..at + 4)?.try_into().ok()?);
        Some(format!(".{us:06}"))
    };
    if t == 0x0b {
        let (negative, days, h, m, sec) = match v {
            [] => (0, 0, 0, 0, 0),
            [neg, d0, d1, d2, d3, h, m, sec, ..] => {
                (*neg, u32::from_le_bytes([*d0, *d1, *d2, *d3]), *h, *m, *sec)
            }
            _ => return None,
        };
        let sign = if negative == 1 { "-" } else { "" };
        let hours = u64::from(days) * 24 + u64::from(h);
        let frac = if v.len() >= 12 {
            micros(8)?
        } else {
            String::new()
        };
        return Some(format!("'{sign}{hours:02}:{m:02}:{sec:02}{frac}'"));
    }
    let (y, mo, d) = match v {
        [] => (0, 0, 0),
        [y0, y1, mo, d, ..] => (u16::from_le_bytes([*y0, *y1]), *mo, *d),
        _ => return None,
    };
    let date = format!("{y:04}-{mo:02}-{d:02}");
    Some(match v.len() {
        0 | 4 if t == 0x0a => format!("'{date}'"),
        0 | 4 => format!("'{date} 00:00:00'"),
        7 => format!("'{date} {:02}:{:02}:{:02}'", v[4], v[5], v[6]),
        11 => format!("'{date} {:02}:{:02}:{:02}{}'", v[4], v[5], v[6], micros(7)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::temporal;

    #[test]
    fn binary_dates_times_and_timestamps_are_shown_as_sql_literals() {
        const DATE: u8 = 0x0a;
        const DATETIME: u8 = 0x0c;
        const TIME: u8 = 0x0b;
        let day = [0xea, 0x07, 12, 6];
        assert_eq!(temporal(DATE, &day).as_deref(), Some("'2026-12-06'"));
        assert_eq!(
            temporal(DATETIME, &day).as_deref(),
            Some("'2026-12-06 00:00:00'")
        );
        let second = [0xea, 0x07, 12, 6, 22, 27, 28];
        assert_eq!(
            temporal(DATETIME, &second).as_deref(),
            Some("'2026-12-06 22:27:28'")
        );
        let micro = [0xea, 0x07, 12, 6, 22, 27, 28, 0x40, 0xe2, 0x01, 0x00];
        assert_eq!(
            temporal(DATETIME, &micro).as_deref(),
            Some("'2026-12-06 22:27:28.123456'")
        );
        assert_eq!(
            temporal(DATETIME, &[]).as_deref(),
            Some("'0000-00-00 00:00:00'")
        );
        // 1 day 2:03:04, negative.
        let time = [1, 1, 0, 0, 0, 2, 3, 4];
        assert_eq!(temporal(TIME, &time).as_deref(), Some("'-26:03:04'"));
        assert_eq!(temporal(TIME, &[]).as_deref(), Some("'00:00:00'"));
        // A length no temporal has.
        assert_eq!(temporal(DATETIME, &[1, 2, 3]), None);
        assert_eq!(temporal(DATETIME, &[0xea, 0x07, 12, 6, 1]), None);
    }
}
