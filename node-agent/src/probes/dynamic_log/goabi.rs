//! Go's calling conventions, replayed over the DWARF parameter list (`DW_AT_location` is not
//! trusted): the register ABI (ABIInternal, Go ≥ 1.17, producer contains `regabi`) and the older
//! stack ABI.
//!
//! Register ABI (go/src/cmd/compile/abi-internal.md): integers in RAX, RBX, RCX, RDI, RSI, R8–R11,
//! floats in X0–X14; a value is split into its scalar parts recursively (string = 2 words, slice = 3,
//! interface = 2, structs field by field, arrays of length ≤ 1 only); if all parts do not fit in the
//! remaining registers the whole value goes to the stack. Results are assigned the same way, starting
//! again from the first registers; stack-assigned results follow the stack-assigned arguments.
use sonde_common::dynlog::reg;

use super::abi::{Piece, Placement, Reg, align_up};
use super::dwarf::{Dwarf, DwarfError, Param};
use super::types::Type;

pub const INT_REGS: [u8; 9] = [
    reg::RAX,
    reg::RBX,
    reg::RCX,
    reg::RDI,
    reg::RSI,
    reg::R8,
    reg::R9,
    reg::R10,
    reg::R11,
];
const FLOAT_REGS: u8 = 15;
/// The goroutine pointer `g` under the register ABI.
pub const G_REG: u8 = reg::R14;

/// A scalar part of a value: offset, size, is it a float.
type Part = (u64, u64, bool);

/// Placements of `params` (arguments, then results), in order.
pub fn assign(
    dwarf: &mut Dwarf,
    params: &[Param],
    regabi: bool,
) -> Result<Vec<Placement>, DwarfError> {
    let mut out = Vec::with_capacity(params.len());
    let mut stack = 0u64;
    for results in [false, true] {
        let (mut ints, mut floats) = (0usize, 0u8);
        if results {
            stack = align_up(stack, 8);
        }
        for p in params.iter().filter(|p| p.is_return == results) {
            let ty = dwarf.ty(p.ty)?;
            let mut parts = Vec::new();
            let fits = regabi && parts_of(dwarf, &ty, 0, &mut parts)? && {
                let n_int = parts.iter().filter(|p| !p.2).count();
                let n_float = parts.iter().filter(|p| p.2).count();
                ints + n_int <= INT_REGS.len()
                    && usize::from(floats) + n_float <= usize::from(FLOAT_REGS)
            };
            let placement = if fits {
                let pieces = parts
                    .iter()
                    .map(|&(offset, size, float)| {
                        let reg = if float {
                            floats += 1;
                            Reg::Float(floats - 1)
                        } else {
                            ints += 1;
                            Reg::Int(INT_REGS[ints - 1])
                        };
                        Piece { offset, size, reg }
                    })
                    .collect();
                Placement::Regs(pieces)
            } else {
                stack = align_up(stack, align_of(dwarf, &ty, 0)?);
                let at = stack;
                stack += ty.size();
                Placement::Stack {
                    offset: 8 + at as i64,
                }
            };
            out.push((p, placement));
        }
    }
    // Back to declaration order.
    Ok(params
        .iter()
        .map(|p| {
            out.iter()
                .find(|(q, _)| std::ptr::eq(*q, p))
                .map(|(_, pl)| pl.clone())
                .unwrap_or(Placement::Regs(Vec::new()))
        })
        .collect())
}

/// Splits a value into register-sized scalars; false when it must go to the stack.
fn parts_of(
    dwarf: &mut Dwarf,
    ty: &Type,
    base: u64,
    out: &mut Vec<Part>,
) -> Result<bool, DwarfError> {
    match ty {
        Type::Int { size, .. } => out.push((base, u64::from(*size), false)),
        Type::Bool { .. } => out.push((base, 1, false)),
        Type::Pointer { .. } => out.push((base, 8, false)),
        Type::Float { size, .. } => out.push((base, u64::from(*size), true)),
        Type::GoString | Type::GoInterface { .. } | Type::RustSlice { .. } => {
            out.push((base, 8, false));
            out.push((base + 8, 8, false));
        }
        Type::GoSlice { .. } => {
            for i in 0..3 {
                out.push((base + 8 * i, 8, false));
            }
        }
        Type::Struct { fields, .. } => {
            for f in fields.clone() {
                let ft = dwarf.ty(f.ty)?;
                if ft.size() == 0 {
                    continue;
                }
                if !parts_of(dwarf, &ft, base + f.offset, out)? {
                    return Ok(false);
                }
            }
        }
        Type::Array { count, elem, .. } => match count {
            0 => {}
            1 => {
                let et = dwarf.ty(*elem)?;
                return parts_of(dwarf, &et, base, out);
            }
            _ => return Ok(false),
        },
        Type::Unsupported { name, .. } if name.starts_with("complex") => {
            let half = if name == "complex64" { 4 } else { 8 };
            out.push((base, half, true));
            out.push((base + half, half, true));
        }
        Type::RustCLike { size, .. } => out.push((base, u64::from(*size), false)),
        Type::Unsupported { .. } | Type::RustVec { .. } | Type::RustEnum { .. } => {
            return Ok(false);
        }
    }
    Ok(true)
}

fn align_of(dwarf: &mut Dwarf, ty: &Type, depth: u32) -> Result<u64, DwarfError> {
    Ok(match ty {
        Type::Int { size, .. } | Type::Float { size, .. } => u64::from(*size).max(1),
        Type::Bool { .. } => 1,
        Type::Struct { fields, .. } if depth < 8 => {
            let mut a = 1;
            for f in fields.clone() {
                let ft = dwarf.ty(f.ty)?;
                a = a.max(align_of(dwarf, &ft, depth + 1)?);
            }
            a
        }
        Type::Array { elem, .. } if depth < 8 => {
            let et = dwarf.ty(*elem)?;
            align_of(dwarf, &et, depth + 1)?
        }
        _ => 8,
    })
}
