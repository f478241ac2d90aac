//! Decoding the records of the capture ring buffer into typed events (layouts from
//! `sonde_common::conn`).
use sonde_common::conn::{
    ClassifyEvent, CloseEvent, DataEventHeader, EVENT_CLASSIFY, EVENT_CLOSE, EVENT_DATA,
    EVENT_EXEC, EVENT_FORK, EVENT_LOCAL, EVENT_OPEN, EVENT_PEER, ExecEvent, ForkEvent, LocalEvent,
    OpenEvent, PeerEvent,
};

/// One record of the ring buffer.
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    Open(OpenEvent),
    Close(CloseEvent),
    Classify(ClassifyEvent),
    Peer(PeerEvent),
    Fork(ForkEvent),
    Local(LocalEvent),
    Exec(ExecEvent),
    Data(DataEventHeader, &'a [u8]),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "a ring-buffer record of {len} bytes is too short for event kind {kind}; the agent and its eBPF object disagree: rebuild the agent"
    )]
    Short { kind: u32, len: usize },
    #[error(
        "unknown event kind {kind} in the ring buffer; the agent and its eBPF object disagree: rebuild the agent"
    )]
    Kind { kind: u32 },
}

impl DecodeError {
    /// Bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short_event",
            DecodeError::Kind { .. } => "unknown_event",
        }
    }
}

/// Copies a `T` out of the start of `bytes` (records are only 8-byte aligned by the kernel, and a
/// copy keeps the event independent of the ring-buffer slot).
fn read<T: aya::Pod>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked above), read_unaligned needs no
    // alignment, and T: Pod is valid for every bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind = match bytes.get(..4) {
        Some(b) => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => {
            return Err(DecodeError::Short {
                kind: 0,
                len: bytes.len(),
            });
        }
    };
    match kind {
        EVENT_OPEN => Ok(Event::Open(read(bytes, kind)?)),
        EVENT_CLOSE => Ok(Event::Close(read(bytes, kind)?)),
        EVENT_CLASSIFY => Ok(Event::Classify(read(bytes, kind)?)),
        EVENT_PEER => Ok(Event::Peer(read(bytes, kind)?)),
        EVENT_FORK => Ok(Event::Fork(read(bytes, kind)?)),
        EVENT_LOCAL => Ok(Event::Local(read(bytes, kind)?)),
        EVENT_EXEC => Ok(Event::Exec(read(bytes, kind)?)),
        EVENT_DATA => {
            let header: DataEventHeader = read(bytes, kind)?;
            let start = std::mem::size_of::<DataEventHeader>();
            let data = bytes
                .get(start..start + header.len as usize)
                .ok_or(DecodeError::Short {
                    kind,
                    len: bytes.len(),
                })?;
            Ok(Event::Data(header, data))
        }
        kind => Err(DecodeError::Kind { kind }),
    }
}

/// Appends `event`'s bytes as the kernel side writes them (what [`decode`] reads): for tests and
/// benchmarks that feed the tracker records of their own.
pub fn encode_into<T: aya::Pod>(out: &mut Vec<u8>, event: &T) {
    // SAFETY: `event` is a live T of size_of::<T>() bytes, and the event structs are plain data
    // without padding (sonde_common asserts their sizes), so every byte is initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref(event).cast::<u8>(), size_of::<T>())
    };
    out.extend_from_slice(bytes);
}

/// A data record: `header` (its `len` set to the data's) and the data.
pub fn data_record(mut header: DataEventHeader, data: &[u8]) -> Vec<u8> {
    header.len = data.len() as u32;
    let mut out = Vec::with_capacity(size_of::<DataEventHeader>() + data.len());
    encode_into(&mut out, &header);
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::conn::EventHeader;

    fn data_record(payload: &[u8]) -> Vec<u8> {
        let header = DataEventHeader {
            header: EventHeader {
                kind: EVENT_DATA,
                tgid: 7,
                fd: 3,
                ..Default::default()
            },
            syscall_len: payload.len() as u64,
            ..Default::default()
        };
        super::data_record(header, payload)
    }

    #[test]
    fn data_event_carries_its_payload() {
        let bytes = data_record(b"GET / HTTP/1.1\r\n");
        match decode(&bytes).unwrap() {
            Event::Data(h, data) => {
                assert_eq!(h.header.tgid, 7);
                assert_eq!(data, b"GET / HTTP/1.1\r\n");
            }
            other => panic!("not a data event: {other:?}"),
        }
    }

    #[test]
    fn data_event_shorter_than_its_length_is_an_error() {
        let mut bytes = data_record(b"hello");
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(decode(&bytes), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert_eq!(
            decode(&[9, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Kind { kind: 9 })
        );
    }
}
