//! STUB: dns is being written by its owner; this placeholder only keeps the crate compiling.
use crate::{ColumnDef, ConnParser, Direction, ParseConfig, ParseError, Record, Role, Transport};

pub const COLUMNS: &[ColumnDef] = &[];

pub fn detect(_dir: Direction, _data: &[u8], _remote_port: u16) -> bool {
    false
}

pub struct Parser;

impl Parser {
    pub fn new(_role: Role, _transport: Transport, _config: &ParseConfig) -> Parser {
        Parser
    }
}

impl ConnParser for Parser {
    fn feed(
        &mut self,
        _dir: Direction,
        _ts_ns: u64,
        _data: &[u8],
        _out: &mut Vec<Record>,
    ) -> Result<(), ParseError> {
        Ok(())
    }
    fn gap(&mut self, _dir: Direction, _lost_bytes: u64) {}
    fn expire(&mut self, _deadline_ns: u64, _out: &mut Vec<Record>) {}
}
