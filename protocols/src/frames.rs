//! Reassembly of length-prefixed frames from one direction of a byte stream (DNS over TCP,
//! PostgreSQL, MySQL), tolerant of any chunking and of lost bytes.
//!
//! Hand-written: the protocol crates we use decode a complete message from a buffer, but a tracer
//! sees partial syscalls, truncated captures and gaps, and must not buffer a 100 MB result row to
//! learn where the next frame starts. So each protocol only decodes its header (total length and
//! how many leading bytes it wants to keep); this reader keeps that prefix, skips the rest of the
//! frame without storing it, and hands out the frame when its last byte has gone by.

/// What a protocol learnt from the first bytes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Not enough bytes yet to know the frame's length.
    Incomplete,
    /// The whole frame (header included) is `len` bytes; keep the first `keep` of them.
    Frame { len: u64, keep: usize },
}

/// Bytes the reader buffers while a header is still incomplete; every header decoded here fits.
const PROBE: usize = 8;

/// One reassembled frame.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The kept prefix of the frame, header included (shorter than `len` when skipped).
    pub bytes: Vec<u8>,
    /// Timestamp of the chunk holding the frame's first byte.
    pub start_ns: u64,
    /// Timestamp of the chunk holding the frame's last byte.
    pub end_ns: u64,
}

/// Frame reassembly state of one direction.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Length and kept length of the current frame, once its header is known.
    current: Option<(u64, usize)>,
    /// Bytes of the current frame still to skip after the kept prefix.
    skip: u64,
    start_ns: u64,
    /// Bytes were lost inside a frame: nothing is parsed until the owner finds a frame start.
    desync: bool,
}

impl FrameReader {
    /// Next complete frame from `data` (advanced past what was consumed), or None when `data` is
    /// exhausted. `decode` reads a header from the frame's first bytes.
    pub fn next(
        &mut self,
        data: &mut &[u8],
        ts_ns: u64,
        decode: impl Fn(&[u8]) -> Result<Header, &'static str>,
    ) -> Result<Option<Frame>, &'static str> {
        if self.desync {
            *data = &[];
            return Ok(None);
        }
        while !data.is_empty() {
            if self.buf.is_empty() && self.current.is_none() {
                self.start_ns = ts_ns;
            }
            match self.current {
                None => {
                    let take = PROBE.saturating_sub(self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    match decode(&self.buf) {
                        Ok(Header::Incomplete) => {
                            *data = &data[take..];
                            if self.buf.len() >= PROBE {
                                return self.fail("header_too_long");
                            }
                        }
                        Ok(Header::Frame { len, keep }) => {
                            let keep = usize::try_from(len).map_or(keep, |l| keep.min(l));
                            // Give back what was read past the kept prefix: the header was
                            // incomplete before this read, so the excess came from `data`.
                            let give_back = self.buf.len().saturating_sub(keep).min(take);
                            self.buf.truncate(self.buf.len() - give_back);
                            *data = &data[take - give_back..];
                            self.current = Some((len, keep));
                            self.skip = len.saturating_sub(self.buf.len() as u64);
                            if let Some(frame) = self.finish_if_done(ts_ns) {
                                return Ok(Some(frame));
                            }
                        }
                        Err(reason) => return self.fail(reason),
                    }
                }
                Some((_, keep)) => {
                    if self.buf.len() < keep {
                        let take = (keep - self.buf.len()).min(data.len());
                        self.buf.extend_from_slice(&data[..take]);
                        *data = &data[take..];
                        self.skip = self.skip.saturating_sub(take as u64);
                    } else {
                        let take = self.skip.min(data.len() as u64) as usize;
                        *data = &data[take..];
                        self.skip -= take as u64;
                    }
                    if let Some(frame) = self.finish_if_done(ts_ns) {
                        return Ok(Some(frame));
                    }
                }
            }
        }
        Ok(None)
    }

    fn finish_if_done(&mut self, ts_ns: u64) -> Option<Frame> {
        let (_, keep) = self.current?;
        if self.buf.len() < keep || self.skip > 0 {
            return None;
        }
        self.current = None;
        Some(Frame {
            bytes: std::mem::take(&mut self.buf),
            start_ns: self.start_ns,
            end_ns: ts_ns,
        })
    }

    fn fail(&mut self, reason: &'static str) -> Result<Option<Frame>, &'static str> {
        self.desync = true;
        self.buf.clear();
        self.current = None;
        self.skip = 0;
        Err(reason)
    }

    /// `lost` bytes of this direction were not captured. Returns true when they fell inside a part
    /// of a frame that was going to be skipped anyway (nothing of value lost).
    pub fn gap(&mut self, lost: u64) -> bool {
        if let Some((_, keep)) = self.current
            && self.buf.len() >= keep
            && lost <= self.skip
        {
            self.skip -= lost;
            return true;
        }
        self.desync = true;
        self.buf.clear();
        self.current = None;
        self.skip = 0;
        false
    }

    /// Is the reader waiting for the owner to find the start of a frame?
    pub fn is_desynced(&self) -> bool {
        self.desync
    }

    /// Is the reader between frames (nothing buffered)?
    pub fn at_boundary(&self) -> bool {
        !self.desync && self.current.is_none() && self.buf.is_empty()
    }

    /// The next bytes start a frame: parse again.
    pub fn resync(&mut self) {
        self.desync = false;
        self.buf.clear();
        self.current = None;
        self.skip = 0;
    }

    /// Hands a frame's buffer back for reuse.
    pub fn recycle(&mut self, mut bytes: Vec<u8>) {
        if self.buf.is_empty() && bytes.capacity() <= 64 * 1024 {
            bytes.clear();
            self.buf = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test framing: 1-byte length of the whole frame, keep at most 4 bytes.
    fn decode(buf: &[u8]) -> Result<Header, &'static str> {
        match buf.first() {
            None => Ok(Header::Incomplete),
            Some(0) => Err("zero"),
            Some(&len) => Ok(Header::Frame {
                len: len.into(),
                keep: 4,
            }),
        }
    }

    fn frames(r: &mut FrameReader, data: &[u8], ts: u64) -> Vec<(Vec<u8>, u64, u64)> {
        let mut rest = data;
        let mut out = Vec::new();
        while let Some(f) = r.next(&mut rest, ts, decode).unwrap() {
            out.push((f.bytes, f.start_ns, f.end_ns));
        }
        out
    }

    #[test]
    fn frames_are_cut_at_their_length_and_keep_only_a_prefix() {
        let mut r = FrameReader::default();
        let got = frames(&mut r, &[2, 9, 6, 1, 2, 3, 4, 5, 1], 7);
        assert_eq!(
            got,
            vec![
                (vec![2, 9], 7, 7),
                (vec![6, 1, 2, 3], 7, 7),
                (vec![1], 7, 7)
            ]
        );
        assert!(r.at_boundary());
    }

    #[test]
    fn a_frame_spanning_chunks_has_the_first_and_last_timestamps() {
        let mut r = FrameReader::default();
        assert!(frames(&mut r, &[6, 1], 1).is_empty());
        assert!(frames(&mut r, &[2, 3], 2).is_empty());
        assert_eq!(frames(&mut r, &[4, 5], 3), vec![(vec![6, 1, 2, 3], 1, 3)]);
    }

    #[test]
    fn a_gap_in_the_skipped_part_loses_nothing() {
        let mut r = FrameReader::default();
        assert!(frames(&mut r, &[10, 1, 2, 3, 4], 1).is_empty());
        assert!(r.gap(3));
        assert_eq!(
            frames(&mut r, &[8, 9, 2, 7], 2),
            vec![(vec![10, 1, 2, 3], 1, 2), (vec![2, 7], 2, 2)]
        );
    }

    #[test]
    fn a_gap_in_the_kept_part_waits_for_a_resync() {
        let mut r = FrameReader::default();
        assert!(frames(&mut r, &[10, 1], 1).is_empty());
        assert!(!r.gap(3));
        assert!(r.is_desynced());
        assert!(frames(&mut r, &[2, 7], 2).is_empty());
        r.resync();
        assert_eq!(frames(&mut r, &[2, 7], 3), vec![(vec![2, 7], 3, 3)]);
    }

    #[test]
    fn a_bad_header_is_reported_once_then_ignored() {
        let mut r = FrameReader::default();
        let mut rest: &[u8] = &[0, 1, 2];
        assert_eq!(r.next(&mut rest, 1, decode).unwrap_err(), "zero");
        let mut rest: &[u8] = &[2, 2];
        assert!(r.next(&mut rest, 2, decode).unwrap().is_none());
    }
}
