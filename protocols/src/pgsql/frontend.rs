//! Messages the client sends (PostgreSQL protocol 3.0, "Frontend" in the docs).
//!
//! Hand-written: `postgres-protocol` only *writes* frontend messages (it is a client library), and
//! their layout is a tag, a length and a few C strings and integers.

use crate::frames::Header;

/// `len` codes of the untagged first messages.
const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Longest untagged (startup) message accepted.
const MAX_STARTUP: u32 = 10_240;

/// Tags of tagged frontend messages.
const TAGS: &[u8] = b"QPBDESHCXpdcfF";

#[derive(Debug, PartialEq)]
pub(super) enum Frontend {
    Startup(Vec<(String, String)>),
    /// SSLRequest or GSSENCRequest: answered by one byte.
    EncryptionRequest,
    /// CancelRequest: the backend whose query to cancel (its secret key is left out).
    Cancel {
        pid: u32,
    },
    Query(String),
    Parse {
        name: String,
        query: String,
        param_types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        formats: Vec<i16>,
        /// Parameter values (None = SQL NULL), each cut to what was kept.
        params: Vec<Option<Vec<u8>>>,
        /// Some parameters were not kept (message larger than kept).
        truncated: bool,
    },
    /// Describe of a prepared statement (Some(name)) or of a portal (None).
    Describe {
        statement: Option<String>,
    },
    Execute {
        portal: String,
    },
    Sync,
    Flush,
    /// Close of a prepared statement ('S') or portal ('P').
    Close {
        statement: Option<String>,
    },
    Terminate,
    /// PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse: all tagged 'p'.
    Password(Vec<u8>),
    FunctionCall,
    /// CopyData, CopyDone, CopyFail.
    Copy,
}

/// Frame header of a client message. `text_cap` bounds the bytes kept of statements and parameters.
pub(super) fn header(buf: &[u8], text_cap: usize) -> Result<Header, &'static str> {
    if buf.first() == Some(&0) {
        // Untagged startup-phase message: no tag is ever 0.
        let Some(len) = be_u32(buf, 0) else {
            return Ok(Header::Incomplete);
        };
        if !(8..=MAX_STARTUP).contains(&len) {
            return Err("bad_startup_length");
        }
        return Ok(Header::Frame {
            len: len.into(),
            keep: len as usize,
        });
    }
    let (Some(&tag), Some(len)) = (buf.first(), be_u32(buf, 1)) else {
        return Ok(Header::Incomplete);
    };
    if !TAGS.contains(&tag) {
        return Err("unknown_frontend_tag");
    }
    if len < 4 {
        return Err("bad_length");
    }
    let keep = match tag {
        b'Q' | b'P' | b'B' => 5 + text_cap + 256,
        b'p' | b'C' | b'D' | b'E' => 5 + 256,
        _ => 5,
    };
    Ok(Header::Frame {
        len: u64::from(len) + 1,
        keep,
    })
}

/// Could a chunk starting with these bytes be the start of a client message?
pub(super) fn starts_message(data: &[u8]) -> bool {
    match data.first() {
        Some(0) => startup_code(data).is_some(),
        Some(tag) => {
            TAGS.contains(tag) && be_u32(data, 1).is_some_and(|l| (4..1 << 30).contains(&l))
        }
        None => false,
    }
}

/// The code of an untagged startup-phase message, when `data` starts with one.
pub(super) fn startup_code(data: &[u8]) -> Option<u32> {
    let len = be_u32(data, 0)?;
    let code = be_u32(data, 4)?;
    ((8..=MAX_STARTUP).contains(&len)
        && matches!(
            code,
            PROTOCOL_3_0 | SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST
        ))
    .then_some(code)
}

/// Decodes a frame (possibly cut short at its kept length). None when it is malformed.
pub(super) fn decode(frame: &[u8]) -> Option<Frontend> {
    if frame.first() == Some(&0) {
        let code = be_u32(frame, 4)?;
        return Some(match code {
            PROTOCOL_3_0 => {
                let mut c = Cursor(frame.get(8..)?);
                let mut params = Vec::new();
                while let Some(key) = c.cstr() {
                    if key.is_empty() {
                        break;
                    }
                    params.push((key, c.cstr()?));
                }
                Frontend::Startup(params)
            }
            SSL_REQUEST | GSSENC_REQUEST => Frontend::EncryptionRequest,
            CANCEL_REQUEST => Frontend::Cancel {
                pid: be_u32(frame, 8)?,
            },
            _ => return None,
        });
    }
    let tag = *frame.first()?;
    let mut c = Cursor(frame.get(5..)?);
    Some(match tag {
        b'Q' => Frontend::Query(c.cstr_lossy()),
        b'P' => {
            let name = c.cstr()?;
            let query = c.cstr_lossy();
            let mut param_types = Vec::new();
            if let Some(n) = c.i16() {
                for _ in 0..n.max(0) {
                    match c.u32() {
                        Some(oid) => param_types.push(oid),
                        None => break,
                    }
                }
            }
            Frontend::Parse {
                name,
                query,
                param_types,
            }
        }
        b'B' => {
            let portal = c.cstr()?;
            let statement = c.cstr()?;
            let nformats = c.i16()?;
            let formats = (0..nformats.max(0))
                .map(|_| c.i16())
                .collect::<Option<Vec<_>>>()?;
            let nparams = c.i16()?;
            let mut params = Vec::new();
            let mut truncated = false;
            for _ in 0..nparams.max(0) {
                let Some(len) = c.i32() else {
                    truncated = true;
                    break;
                };
                if len < 0 {
                    params.push(None);
                    continue;
                }
                let (value, whole) = c.take_up_to(len as usize);
                params.push(Some(value.to_vec()));
                if !whole {
                    truncated = true;
                    break;
                }
            }
            Frontend::Bind {
                portal,
                statement,
                formats,
                params,
                truncated,
            }
        }
        b'D' => {
            let kind = c.u8()?;
            let name = c.cstr()?;
            Frontend::Describe {
                statement: (kind == b'S').then_some(name),
            }
        }
        b'E' => Frontend::Execute { portal: c.cstr()? },
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'C' => {
            let kind = c.u8()?;
            let name = c.cstr()?;
            Frontend::Close {
                statement: (kind == b'S').then_some(name),
            }
        }
        b'X' => Frontend::Terminate,
        b'p' => Frontend::Password(c.rest().to_vec()),
        b'F' => Frontend::FunctionCall,
        b'd' | b'c' | b'f' => Frontend::Copy,
        _ => return None,
    })
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Bounds-checked reads over a message body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let head = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(head)
    }

    /// Up to `n` bytes, and whether all `n` were there.
    fn take_up_to(&mut self, n: usize) -> (&'a [u8], bool) {
        let k = n.min(self.0.len());
        let head = &self.0[..k];
        self.0 = &self.0[k..];
        (head, k == n)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A NUL-terminated string; None when the terminator was not kept.
    fn cstr(&mut self) -> Option<String> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Some(s)
    }

    /// A NUL-terminated string, or what was kept of it.
    fn cstr_lossy(&mut self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = self.0.get(end + 1..).unwrap_or_default();
        s
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
