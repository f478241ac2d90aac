//! The System V AMD64 calling convention (C, C++). Rust's own ABI differs for aggregates:
//! [`super::rustabi`].
//!
//! Integer class values use RDI, RSI, RDX, RCX, R8, R9 in order; an aggregate of at most 16 bytes
//! takes one register per eightbyte, or goes to the stack whole when they do not all fit. Results:
//! RAX (then RDX); a larger result is written to memory whose address the caller passes in RDI and
//! the callee returns in RAX. Floats travel in XMM registers, which uprobes cannot read.
use sonde_common::dynlog::reg;

use super::abi::{Piece, Placement, Reg, align_up};
use super::dwarf::{Dwarf, DwarfError, Param};
use super::types::Type;

const INT_REGS: [u8; 6] = [reg::RDI, reg::RSI, reg::RDX, reg::RCX, reg::R8, reg::R9];

/// Placements of `params` (arguments, then the `~r0` result), in order.
pub fn assign(dwarf: &mut Dwarf, params: &[Param]) -> Result<Vec<Placement>, DwarfError> {
    let mut ints = 0usize;
    let mut floats = 0u8;
    let mut stack = 0u64;
    let mut out = Vec::with_capacity(params.len());
    // A large result takes RDI for its hidden pointer before any argument.
    if let Some(ret) = params.iter().find(|p| p.is_return) {
        let ty = dwarf.ty(ret.ty)?;
        if ty.size() > 16 {
            ints = 1;
        }
    }
    for p in params {
        let ty = dwarf.ty(p.ty)?;
        let size = ty.size();
        let float = has_float(dwarf, &ty, 0)?;
        let placement = if p.is_return {
            if size > 16 {
                Placement::Indirect { reg: reg::RAX }
            } else if float {
                Placement::Regs(vec![Piece {
                    offset: 0,
                    size,
                    reg: Reg::Float(0),
                }])
            } else {
                Placement::Regs(words(size, &[reg::RAX, reg::RDX]))
            }
        } else if size == 0 {
            Placement::Regs(Vec::new())
        } else if float && size <= 16 {
            floats += 1;
            Placement::Regs(vec![Piece {
                offset: 0,
                size,
                reg: Reg::Float(floats - 1),
            }])
        } else if size <= 16 {
            let n = size.div_ceil(8) as usize;
            if ints + n <= INT_REGS.len() {
                let pieces = words(size, &INT_REGS[ints..ints + n]);
                ints += n;
                Placement::Regs(pieces)
            } else {
                stack = align_up(stack, 8);
                let at = stack;
                stack += align_up(size, 8);
                Placement::Stack {
                    offset: 8 + at as i64,
                }
            }
        } else {
            stack = align_up(stack, 8);
            let at = stack;
            stack += align_up(size, 8);
            Placement::Stack {
                offset: 8 + at as i64,
            }
        };
        out.push(placement);
    }
    Ok(out)
}

/// One piece per eightbyte of a `size`-byte value.
pub(super) fn words(size: u64, regs: &[u8]) -> Vec<Piece> {
    regs.iter()
        .enumerate()
        .take(size.div_ceil(8) as usize)
        .map(|(i, r)| Piece {
            offset: 8 * i as u64,
            size: (size - 8 * i as u64).min(8),
            reg: Reg::Int(*r),
        })
        .collect()
}

fn has_float(dwarf: &mut Dwarf, ty: &Type, depth: u32) -> Result<bool, DwarfError> {
    Ok(match ty {
        Type::Float { .. } => true,
        Type::Struct { fields, .. } if depth < 8 => {
            let mut any = false;
            for f in fields.clone() {
                let ft = dwarf.ty(f.ty)?;
                any |= has_float(dwarf, &ft, depth + 1)?;
            }
            any
        }
        Type::Array { elem, .. } if depth < 8 => {
            let et = dwarf.ty(*elem)?;
            has_float(dwarf, &et, depth + 1)?
        }
        _ => false,
    })
}
