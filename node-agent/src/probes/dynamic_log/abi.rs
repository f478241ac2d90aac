//! Where a calling convention puts a value at a function's entry (arguments) or at its RET
//! instructions (results). Filled by [`super::goabi`], [`super::sysv`] and [`super::rustabi`].
use sonde_common::dynlog::reg;

/// A register that holds (part of) a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// A general-purpose register, as a `pt_regs` word index ([`sonde_common::dynlog::reg`]).
    Int(u8),
    /// X0–X15. Uprobes see `pt_regs` only, which has no XMM registers: such values cannot be read.
    Float(u8),
    /// Not a register: the stack slot at `rsp + offset` that takes the register's place once they
    /// run out (the second half of a Rust scalar pair, whose first half got the last register).
    Stack(i64),
}

/// One register's share of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Byte offset of this piece inside the value.
    pub offset: u64,
    pub size: u64,
    pub reg: Reg,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In registers, piece by piece (a zero-sized value has no pieces).
    Regs(Vec<Piece>),
    /// In memory at `rsp + offset` (at the entry and at a RET, `rsp` points at the return address).
    Stack { offset: i64 },
    /// In memory at the address held by a register (large Rust arguments, large C/Rust results).
    Indirect { reg: u8 },
    /// In memory at the address held in the stack slot at `rsp + offset` (a large Rust argument
    /// once the registers have run out).
    StackIndirect { offset: i64 },
}

/// Name of a `pt_regs` word, for messages.
pub fn reg_name(r: Reg) -> String {
    match r {
        Reg::Float(n) => format!("X{n}"),
        Reg::Stack(offset) => format!("the stack at RSP+{offset}"),
        Reg::Int(w) => match w {
            reg::RAX => "RAX",
            reg::RBX => "RBX",
            reg::RCX => "RCX",
            reg::RDX => "RDX",
            reg::RSI => "RSI",
            reg::RDI => "RDI",
            reg::R8 => "R8",
            reg::R9 => "R9",
            reg::R10 => "R10",
            reg::R11 => "R11",
            reg::R12 => "R12",
            reg::R13 => "R13",
            reg::R14 => "R14",
            reg::R15 => "R15",
            reg::RBP => "RBP",
            reg::RSP => "RSP",
            _ => "?",
        }
        .to_owned(),
    }
}

pub fn align_up(value: u64, align: u64) -> u64 {
    if align <= 1 {
        value
    } else {
        value.div_ceil(align) * align
    }
}
