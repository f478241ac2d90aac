//! Test helper: a byte stream as the kernel side hands it to a parser when the reader takes more
//! per syscall than is captured (Node.js reads 64 KiB at a time): of each long read, its first
//! chunks, a gap, and its last bytes.
use sonde_common::conn::{DATA_CHUNK, MAX_CHUNKS_PER_SYSCALL, TAIL_BYTES};

use crate::{ConnParser, Direction, Record};

/// Feeds `stream` to `parser` as reads of `read` bytes, the k-th at timestamp `ts + k`.
pub(crate) fn feed_reads(
    parser: &mut dyn ConnParser,
    dir: Direction,
    ts: u64,
    stream: &[u8],
    read: usize,
    out: &mut Vec<Record>,
) {
    let captured = DATA_CHUNK * MAX_CHUNKS_PER_SYSCALL as usize;
    let tail = TAIL_BYTES as usize;
    for (k, piece) in stream.chunks(read).enumerate() {
        let ts = ts + k as u64;
        if piece.len() <= captured {
            parser.feed(dir, ts, piece, out).unwrap();
            continue;
        }
        // The last chunk's place goes to the read's tail.
        let head = captured - DATA_CHUNK;
        parser.feed(dir, ts, &piece[..head], out).unwrap();
        parser.gap(dir, (piece.len() - head - tail) as u64);
        parser
            .feed(dir, ts, &piece[piece.len() - tail..], out)
            .unwrap();
    }
}
