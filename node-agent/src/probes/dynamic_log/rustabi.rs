//! Rust's own calling convention on x86-64 (the "Rust" ABI of every non-`extern` function), as
//! rustc lowers it to LLVM. It uses SysV's registers but decides by the value's *layout*, not by
//! SysV's eightbyte classes:
//!
//! - one scalar (integer, bool, pointer, fieldless enum, or a struct or enum holding only one)
//!   travels as that scalar: the next integer register (`u128`: two), a float in an XMM register;
//! - a scalar pair (a struct, tuple or enum whose data is exactly two scalars: `Point { x: i32,
//!   y: i32 }`, `(u64, u64)`, `&str`, `Option<u32>`) travels as two separate values in memory
//!   order, each in a register of its own (not packed by eightbyte) or, once registers run out,
//!   in a stack slot of its own; results come back in RAX then RDX (XMM0, XMM1 for floats);
//! - any other aggregate (struct, array, enum) travels cast to one integer register when it
//!   fits in 8 bytes, floats included, and by reference when wider; such a result is written to
//!   memory whose address the caller passes in RDI and the callee returns in RAX.
//!
//! Checked against rustc's LLVM IR and machine code at opt-level 0, 1 and 3. Parameter
//! locations in DWARF do not help at the entry: at opt-level 0 they are frame offsets, valid
//! only once the prologue has spilled the registers; optimised code often has none.
use sonde_common::dynlog::reg;

use super::abi::{Piece, Placement, Reg, align_up};
use super::dwarf::{Dwarf, DwarfError, Param};
use super::sysv::words;
use super::types::Type;

const INT_REGS: [u8; 6] = [reg::RDI, reg::RSI, reg::RDX, reg::RCX, reg::R8, reg::R9];
const FLOAT_REGS: u8 = 8;

/// One scalar of a value: where it sits in the value's memory, and whether it is a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Leaf {
    offset: u64,
    size: u64,
    float: bool,
}

/// How rustc passes a value of some layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Zst,
    Scalar {
        float: bool,
    },
    Pair([Leaf; 2]),
    /// An aggregate of at most 8 bytes, in one integer register.
    Cast,
    /// An aggregate wider than 8 bytes, by reference.
    Indirect,
}

/// Placements of `params` (arguments, then the `~r0` result), in order.
pub fn assign(dwarf: &mut Dwarf, params: &[Param]) -> Result<Vec<Placement>, DwarfError> {
    let mut values = Vec::with_capacity(params.len());
    for p in params {
        let ty = dwarf.ty(p.ty)?;
        values.push((p.is_return, ty.size(), classify(dwarf, &ty)?));
    }
    Ok(place(&values))
}

/// The placement of each `(is_return, size, class)`.
fn place(values: &[(bool, u64, Class)]) -> Vec<Placement> {
    let mut args = Args::default();
    // A result passed by reference takes RDI for its hidden pointer before any argument.
    if values
        .iter()
        .any(|(ret, _, class)| *ret && *class == Class::Indirect)
    {
        args.ints = 1;
    }
    values
        .iter()
        .map(|&(ret, size, class)| {
            if ret {
                result(size, class)
            } else {
                args.place(size, class)
            }
        })
        .collect()
}

fn result(size: u64, class: Class) -> Placement {
    match class {
        Class::Zst => Placement::Regs(Vec::new()),
        Class::Scalar { float: true } => Placement::Regs(vec![Piece {
            offset: 0,
            size,
            reg: Reg::Float(0),
        }]),
        Class::Scalar { float: false } | Class::Cast => {
            Placement::Regs(words(size, &[reg::RAX, reg::RDX]))
        }
        Class::Pair(leaves) => {
            let (mut ints, mut floats) = ([reg::RAX, reg::RDX].into_iter(), 0u8..);
            Placement::Regs(
                leaves
                    .iter()
                    .map(|l| Piece {
                        offset: l.offset,
                        size: l.size,
                        reg: if l.float {
                            Reg::Float(floats.next().unwrap_or_default())
                        } else {
                            Reg::Int(ints.next().unwrap_or(reg::RDX))
                        },
                    })
                    .collect(),
            )
        }
        Class::Indirect => Placement::Indirect { reg: reg::RAX },
    }
}

/// Registers and stack taken by the arguments so far.
#[derive(Default)]
struct Args {
    ints: usize,
    floats: u8,
    stack: u64,
}

impl Args {
    fn place(&mut self, size: u64, class: Class) -> Placement {
        match class {
            Class::Zst => Placement::Regs(Vec::new()),
            Class::Scalar { float: true } => match self.float() {
                Some(r) => Placement::Regs(vec![Piece {
                    offset: 0,
                    size,
                    reg: r,
                }]),
                None => Placement::Stack {
                    offset: self.slot(size),
                },
            },
            Class::Scalar { float: false } | Class::Cast => {
                // A 16-byte integer takes two registers or none.
                let n = size.div_ceil(8) as usize;
                if self.ints + n <= INT_REGS.len() {
                    self.ints += n;
                    Placement::Regs(words(size, &INT_REGS[self.ints - n..self.ints]))
                } else {
                    Placement::Stack {
                        offset: self.slot(size),
                    }
                }
            }
            // Two arguments as far as registers go: the second may land on the stack alone.
            Class::Pair(leaves) => Placement::Regs(
                leaves
                    .iter()
                    .map(|l| Piece {
                        offset: l.offset,
                        size: l.size,
                        reg: if l.float {
                            self.float()
                        } else {
                            self.int().map(Reg::Int)
                        }
                        .unwrap_or_else(|| Reg::Stack(self.slot(l.size))),
                    })
                    .collect(),
            ),
            Class::Indirect => match self.int() {
                Some(r) => Placement::Indirect { reg: r },
                None => Placement::StackIndirect {
                    offset: self.slot(8),
                },
            },
        }
    }

    fn int(&mut self) -> Option<u8> {
        let r = INT_REGS.get(self.ints)?;
        self.ints += 1;
        Some(*r)
    }

    fn float(&mut self) -> Option<Reg> {
        if self.floats >= FLOAT_REGS {
            return None;
        }
        self.floats += 1;
        Some(Reg::Float(self.floats - 1))
    }

    /// A stack slot of its own (8 bytes, 16 for a 16-byte value), as `rsp + offset` at the entry.
    fn slot(&mut self, size: u64) -> i64 {
        self.stack = align_up(self.stack, size.clamp(8, 16));
        let at = self.stack;
        self.stack += align_up(size, 8);
        8 + at as i64
    }
}

fn classify(dwarf: &mut Dwarf, ty: &Type) -> Result<Class, DwarfError> {
    let size = ty.size();
    if size == 0 {
        return Ok(Class::Zst);
    }
    let mut found = Vec::new();
    if leaves(dwarf, ty, 0, &mut found, 0)? {
        found.sort_unstable();
        found.dedup();
        match found.as_slice() {
            [one] if one.offset == 0 && one.size == size => {
                return Ok(Class::Scalar { float: one.float });
            }
            // Two scalars that do not overlap (the variants of an enum that put different
            // kinds of data in the same place are an aggregate).
            [a, b] if a.offset + a.size <= b.offset && a.size <= 8 && b.size <= 8 => {
                return Ok(Class::Pair([*a, *b]));
            }
            _ => {}
        }
    }
    Ok(if size <= 8 {
        Class::Cast
    } else {
        Class::Indirect
    })
}

/// Collects every scalar of `ty` at `base` (for an enum: its discriminant and the scalars of all
/// its variants); false when it holds something that makes it an aggregate (an array, a buffer).
fn leaves(
    dwarf: &mut Dwarf,
    ty: &Type,
    base: u64,
    out: &mut Vec<Leaf>,
    depth: u32,
) -> Result<bool, DwarfError> {
    if depth > 8 || out.len() > 4 {
        return Ok(false);
    }
    let leaf = |offset, size, float| Leaf {
        offset,
        size,
        float,
    };
    match ty {
        _ if ty.size() == 0 => {}
        Type::Int { .. } | Type::Bool { .. } | Type::Pointer { .. } | Type::RustCLike { .. } => {
            out.push(leaf(base, ty.size(), false));
        }
        Type::Float { .. } => out.push(leaf(base, ty.size(), true)),
        Type::RustSlice { .. } => {
            out.push(leaf(base, 8, false));
            out.push(leaf(base + 8, 8, false));
        }
        Type::Struct { fields, .. } => {
            for f in fields.clone() {
                let ft = dwarf.ty(f.ty)?;
                if !leaves(dwarf, &ft, base + f.offset, out, depth + 1)? {
                    return Ok(false);
                }
            }
        }
        Type::RustEnum {
            discr, variants, ..
        } => {
            if let Some(d) = discr {
                out.push(leaf(base + d.offset, u64::from(d.size), false));
            }
            for f in variants.iter().flat_map(|v| v.fields.clone()) {
                let ft = dwarf.ty(f.ty)?;
                if !leaves(dwarf, &ft, base + f.offset, out, depth + 1)? {
                    return Ok(false);
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(offset: u64, size: u64) -> Leaf {
        Leaf {
            offset,
            size,
            float: false,
        }
    }

    fn piece(offset: u64, size: u64, reg: Reg) -> Piece {
        Piece { offset, size, reg }
    }

    #[test]
    fn a_pair_of_i32_takes_a_register_each_and_comes_back_in_rax_and_rdx() {
        let point = Class::Pair([int(0, 4), int(4, 4)]);
        let got = place(&[
            (false, 8, point),
            (false, 4, Class::Scalar { float: false }),
            (true, 8, point),
        ]);
        assert_eq!(
            got,
            [
                Placement::Regs(vec![
                    piece(0, 4, Reg::Int(reg::RDI)),
                    piece(4, 4, Reg::Int(reg::RSI))
                ]),
                Placement::Regs(vec![piece(0, 4, Reg::Int(reg::RDX))]),
                Placement::Regs(vec![
                    piece(0, 4, Reg::Int(reg::RAX)),
                    piece(4, 4, Reg::Int(reg::RDX))
                ]),
            ]
        );
    }

    #[test]
    fn a_pair_split_by_the_last_register_puts_its_second_half_in_a_stack_slot_of_its_own() {
        let scalar = (false, 8, Class::Scalar { float: false });
        let point = (false, 8, Class::Pair([int(0, 4), int(4, 4)]));
        let got = place(&[scalar, scalar, scalar, scalar, scalar, point, point]);
        assert_eq!(
            got[5],
            Placement::Regs(vec![
                piece(0, 4, Reg::Int(reg::R9)),
                piece(4, 4, Reg::Stack(8))
            ])
        );
        assert_eq!(
            got[6],
            Placement::Regs(vec![
                piece(0, 4, Reg::Stack(16)),
                piece(4, 4, Reg::Stack(24))
            ])
        );
    }

    #[test]
    fn wide_aggregates_go_by_reference_after_the_hidden_result_pointer_and_small_ones_are_cast() {
        let got = place(&[
            (false, 16, Class::Indirect),
            (false, 4, Class::Cast),
            (true, 24, Class::Indirect),
        ]);
        assert_eq!(
            got,
            [
                Placement::Indirect { reg: reg::RSI },
                Placement::Regs(vec![piece(0, 4, Reg::Int(reg::RDX))]),
                Placement::Indirect { reg: reg::RAX },
            ]
        );
    }

    #[test]
    fn a_float_half_of_a_pair_goes_to_xmm_and_the_integer_half_to_the_next_register() {
        let pair = Class::Pair([
            Leaf {
                offset: 0,
                size: 4,
                float: true,
            },
            int(4, 4),
        ]);
        let got = place(&[(false, 8, pair), (true, 8, pair)]);
        assert_eq!(
            got,
            [
                Placement::Regs(vec![
                    piece(0, 4, Reg::Float(0)),
                    piece(4, 4, Reg::Int(reg::RDI))
                ]),
                Placement::Regs(vec![
                    piece(0, 4, Reg::Float(0)),
                    piece(4, 4, Reg::Int(reg::RAX))
                ]),
            ]
        );
    }
}
