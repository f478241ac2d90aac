//! From a function, its parameter placements and the user's capture expressions to the two
//! kernel [`Plan`]s (entry, return) and the [`Render`]s that turn their slot records into columns.
//!
//! A value is tracked as a [`Place`]: still in registers (piece by piece), or in memory at a
//! location's value plus an offset. Field access narrows the place, a pointer hop turns it into a
//! memory place one hop further, and the final type decides what the kernel records.
use std::collections::BTreeMap;
use std::sync::Arc;

use sonde_api::DynamicLogSpec;
use sonde_common::dynlog::{
    Loc, MAX_HOPS, MAX_READ, MAX_SLOTS, Plan, Slot, kind, plan_flags, source,
};

use super::abi::{Piece, Placement, Reg, reg_name};
use super::binary::Binary;
use super::dwarf::{Dwarf, DwarfError, Function, Language, Param, Passed};
use super::expr::{self, ExprError, Root, Step};
use super::goabi;
use super::rustabi;
use super::sysv;
use super::types::{Discr, Type, TypeId, Variant};
use crate::tables::ColumnType;

/// Default `maxStringBytes`.
pub const DEFAULT_MAX_BYTES: u32 = 64;
/// Struct nesting rendered inside a column.
const MAX_DEPTH: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Dwarf(#[from] DwarfError),
    #[error("{source} (function {function})")]
    Expr {
        function: String,
        #[source]
        source: ExprError,
    },
    #[error("expression {expr:?} in {function}: {why}; available: {available}")]
    Resolve {
        expr: String,
        function: String,
        why: String,
        available: String,
    },
    #[error("expression {expr:?} in {function} has type {ty}, which cannot be captured: {why}")]
    Unsupported {
        expr: String,
        function: String,
        ty: String,
        why: String,
    },
    #[error(
        "the capture of {function} needs more than {MAX_SLOTS} values at its {site} (at {expr:?}); capture fewer arguments or fields"
    )]
    Budget {
        expr: String,
        function: String,
        site: &'static str,
    },
    #[error(
        "column {column} is declared twice for {function}; give every capture its own name (goid, tid and latency are taken)"
    )]
    Duplicate { column: String, function: String },
}

/// How a scalar's bits are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    Int {
        signed: bool,
    },
    Bool,
    Float,
    /// A pointer, shown as `0x…`.
    Address,
}

/// How the slot records of one value become a column value (or a JSON member).
#[derive(Clone, Debug, PartialEq)]
pub enum Render {
    /// One SCALAR slot: `size` bytes starting `shift` bytes into the recorded word.
    Scalar { kind: Scalar, size: u8, shift: u8 },
    /// One BYTES or CSTR slot, as text.
    Str,
    /// One BYTES slot, as hex.
    Hex,
    /// One BYTES or MEMORY slot holding consecutive scalars, as a JSON array.
    Elems { kind: Scalar, size: u8 },
    /// Fields in order, each with its own slots; `truncated` when fields were left out.
    Struct {
        fields: Vec<(String, Render)>,
        truncated: bool,
    },
    /// Go interface: type word, data word, and the string the data points at (shown only for
    /// dynamic types known to start with a string).
    Iface {
        types: Arc<BTreeMap<u64, (String, bool)>>,
    },
    /// A Rust enum: the discriminant's slot (None: one variant only), then every variant's
    /// fields' slots in order; the discriminant picks the variant shown.
    Enum {
        discr: Option<Box<Render>>,
        variants: Vec<VariantRender>,
    },
    /// One SCALAR slot holding a fieldless Rust enum, shown by variant name.
    Named {
        size: u8,
        shift: u8,
        signed: bool,
        names: Vec<(u64, String)>,
    },
    /// Known without reading (the length of an array).
    Const(i64),
    /// Cannot be read here; shown as this text inside JSON.
    Note(String),
}

/// One variant of a [`Render::Enum`].
#[derive(Clone, Debug, PartialEq)]
pub struct VariantRender {
    pub name: String,
    /// Its discriminant value; None for the default variant.
    pub value: Option<u64>,
    /// `Some(x)`, `Rect(w, h)`: fields shown by position, not by name.
    pub tuple: bool,
    pub fields: Vec<(String, Render)>,
}

impl VariantRender {
    pub fn slots(&self) -> usize {
        self.fields.iter().map(|(_, r)| r.slots()).sum()
    }
}

impl Render {
    /// Slots this render consumes.
    pub fn slots(&self) -> usize {
        match self {
            Render::Scalar { .. }
            | Render::Str
            | Render::Hex
            | Render::Elems { .. }
            | Render::Named { .. } => 1,
            Render::Enum { discr, variants } => {
                discr.as_ref().map_or(0, |d| d.slots())
                    + variants.iter().map(VariantRender::slots).sum::<usize>()
            }
            Render::Struct { fields, .. } => fields.iter().map(|(_, r)| r.slots()).sum(),
            Render::Iface { .. } => 3,
            Render::Const(_) | Render::Note(_) => 0,
        }
    }

    pub fn column_type(&self) -> ColumnType {
        match self {
            Render::Scalar {
                kind: Scalar::Int { signed: true },
                ..
            }
            | Render::Const(_) => ColumnType::Int64,
            Render::Scalar {
                kind: Scalar::Int { signed: false },
                ..
            } => ColumnType::UInt64,
            Render::Scalar {
                kind: Scalar::Bool, ..
            } => ColumnType::Boolean,
            Render::Scalar {
                kind: Scalar::Float,
                ..
            } => ColumnType::Float64,
            _ => ColumnType::String,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ColumnPlan {
    pub name: String,
    pub render: Render,
}

/// Everything needed to attach and decode one probe on one binary.
#[derive(Clone, Debug)]
pub struct Planned {
    pub function: String,
    pub language: Language,
    pub go: bool,
    /// Virtual address of the entry and of every RET.
    pub entry_address: u64,
    pub entry: Plan,
    pub entry_columns: Vec<ColumnPlan>,
    /// None when nothing is needed at return (no results, no latency).
    pub ret: Option<Plan>,
    pub return_columns: Vec<ColumnPlan>,
    pub latency: bool,
    /// Captures left out of the default capture (too many values), for the status message.
    pub notes: Vec<String>,
}

/// Where a value is while it is being planned.
#[derive(Clone, Debug)]
enum Place {
    /// Register pieces; `shift` is the byte offset of the value inside each register.
    Regs(Vec<(Piece, u8)>),
    /// At `resolve(base) + off`.
    Mem { base: Loc, off: i64 },
}

fn reg_loc(r: u8) -> Loc {
    Loc {
        source: source::REG,
        reg: r,
        ..Loc::default()
    }
}

/// Which side of the call a capture is read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Entry,
    Return,
}

struct Builder<'a> {
    dwarf: &'a mut Dwarf,
    function: &'a Function,
    placements: &'a [Placement],
    max_bytes: u16,
    c_strings: bool,
    /// Go interface dynamic types by itab / type descriptor address.
    iface_types: Option<Arc<BTreeMap<u64, (String, bool)>>>,
    binary: &'a Binary,
    entry: Vec<Slot>,
    ret: Vec<Slot>,
}

/// A failure inside one expression, before it is given the expression's text.
enum Fail {
    Resolve(String),
    Unsupported { ty: String, why: String },
    Budget,
    Dwarf(DwarfError),
}

impl From<DwarfError> for Fail {
    fn from(e: DwarfError) -> Self {
        Fail::Dwarf(e)
    }
}

/// Plans `spec` for `function` of `binary`.
pub fn plan(
    binary: &Binary,
    dwarf: &mut Dwarf,
    function: &Function,
    spec: &DynamicLogSpec,
) -> Result<Planned, PlanError> {
    let go = function.language == Language::Go;
    let regabi = function.producer.contains("regabi");
    let placements = match function.language {
        Language::Go => goabi::assign(dwarf, &function.params, regabi)?,
        Language::Rust => rustabi::assign(dwarf, &function.params)?,
        _ => sysv::assign(dwarf, &function.params)?,
    };
    let max_bytes = spec
        .max_string_bytes
        .unwrap_or(DEFAULT_MAX_BYTES)
        .clamp(1, MAX_READ as u32) as u16;
    let mut b = Builder {
        dwarf,
        function,
        placements: &placements,
        max_bytes,
        c_strings: matches!(function.language, Language::C | Language::Cpp),
        iface_types: None,
        binary,
        entry: Vec::new(),
        ret: Vec::new(),
    };
    let (captures, latency, explicit) = match &spec.capture {
        Some(c) => (
            c.args
                .iter()
                .chain(c.returns.iter())
                .map(|e| (e.name.clone(), e.expr.clone()))
                .collect::<Vec<_>>(),
            c.latency,
            true,
        ),
        None => (default_captures(function), true, false),
    };
    let mut entry_columns = Vec::new();
    let mut return_columns = Vec::new();
    let mut notes = Vec::new();
    let mut taken: Vec<String> = vec![if go { "goid" } else { "tid" }.to_owned()];
    if latency {
        taken.push("latency".into());
    }
    for (name, text) in captures {
        if taken.contains(&name) {
            return Err(PlanError::Duplicate {
                column: name,
                function: function.name.clone(),
            });
        }
        taken.push(name.clone());
        let parsed = expr::parse(&text).map_err(|source| PlanError::Expr {
            function: function.name.clone(),
            source,
        })?;
        let mark = (b.entry.len(), b.ret.len());
        match b.expression(&parsed) {
            Ok((side, render)) => {
                let column = ColumnPlan { name, render };
                match side {
                    Side::Entry => entry_columns.push(column),
                    Side::Return => return_columns.push(column),
                }
            }
            Err(Fail::Budget) if !explicit => {
                b.entry.truncate(mark.0);
                b.ret.truncate(mark.1);
                notes.push(format!("{name} left out (more than {MAX_SLOTS} values)"));
            }
            Err(Fail::Unsupported { ty, why }) if !explicit => {
                b.entry.truncate(mark.0);
                b.ret.truncate(mark.1);
                notes.push(format!("{name} ({ty}) left out: {why}"));
            }
            Err(fail) => {
                let site = if matches!(parsed.root, Root::Result(_)) || b.is_result(&parsed.root) {
                    "return"
                } else {
                    "entry"
                };
                return Err(b.error(&text, fail, site));
            }
        }
    }
    let flags = if go && regabi { plan_flags::GO } else { 0 };
    let (goid_off, stack_hi_off) = if flags == plan_flags::GO {
        b.dwarf.go_g_offsets().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let make = |slots: &[Slot]| {
        let mut plan = Plan {
            flags,
            n_slots: slots.len() as u32,
            g_reg: u32::from(goabi::G_REG),
            goid_off: goid_off as u32,
            stack_hi_off: stack_hi_off as u32,
            ..Plan::default()
        };
        plan.slots[..slots.len()].copy_from_slice(slots);
        plan
    };
    let needs_return = latency || !return_columns.is_empty();
    Ok(Planned {
        function: function.name.clone(),
        language: function.language,
        go,
        entry_address: function.low_pc,
        entry: make(&b.entry),
        entry_columns,
        ret: needs_return.then(|| make(&b.ret)),
        return_columns,
        latency,
        notes,
    })
}

/// Every argument, then every result (`ret0`, … unless named).
fn default_captures(function: &Function) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut results = 0;
    for p in &function.params {
        if p.is_return {
            let expr = format!("${results}");
            let name = if p.name.starts_with('~') {
                format!("ret{results}")
            } else {
                column_name(&p.name)
            };
            results += 1;
            out.push((name, expr));
        } else {
            out.push((column_name(&p.name), p.name.clone()));
        }
    }
    out
}

/// A parameter name as a column name: lower case, `[a-z0-9_]`, not starting with a digit.
fn column_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

impl Builder<'_> {
    fn is_result(&self, root: &Root) -> bool {
        match root {
            Root::Result(_) => true,
            Root::Name(n) => self
                .function
                .params
                .iter()
                .any(|p| p.is_return && &p.name == n),
        }
    }

    /// A parameter the traced copy of the function does not receive where DynamicLog can read it.
    fn not_received(&mut self, param: &Param) -> Fail {
        let ty = match self.dwarf.ty(param.ty) {
            Ok(t) => t.name().to_owned(),
            Err(e) => return Fail::Dwarf(e),
        };
        Fail::Unsupported {
            ty,
            why: format!(
                "the copy of {} this program runs is specialised by the compiler and does not \
                 receive {} in a register (it dropped, split or recomputes it); capture the other \
                 arguments, or build without -fipa-cp/-fipa-sra (or mark the function noipa)",
                self.function.name, param.name
            ),
        }
    }

    fn available(&self) -> String {
        let mut args = Vec::new();
        let mut results = 0;
        for p in &self.function.params {
            if p.is_return {
                if p.name.starts_with('~') {
                    args.push(format!("${results}"));
                } else {
                    args.push(format!("${results} ({})", p.name));
                }
                results += 1;
            } else {
                args.push(p.name.clone());
            }
        }
        if args.is_empty() {
            "nothing (the function has no parameters or results)".into()
        } else {
            args.join(", ")
        }
    }

    fn error(&self, text: &str, fail: Fail, site: &'static str) -> PlanError {
        let function = self.function.name.clone();
        let expr = text.to_owned();
        match fail {
            Fail::Resolve(why) => PlanError::Resolve {
                expr,
                function,
                why,
                available: self.available(),
            },
            Fail::Unsupported { ty, why } => PlanError::Unsupported {
                expr,
                function,
                ty,
                why,
            },
            Fail::Budget => PlanError::Budget {
                expr,
                function,
                site,
            },
            Fail::Dwarf(e) => PlanError::Dwarf(e),
        }
    }

    fn expression(&mut self, e: &expr::Expr) -> Result<(Side, Render), Fail> {
        let params = &self.function.params;
        let index = match &e.root {
            Root::Name(n) => params.iter().position(|p| &p.name == n),
            Root::Result(i) => params
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_return)
                .nth(*i)
                .map(|(j, _)| j),
        };
        let Some(index) = index else {
            return Err(Fail::Resolve(match &e.root {
                Root::Name(n) => format!("{n} is not an argument or named result"),
                Root::Result(i) => format!("the function has no result ${i}"),
            }));
        };
        let param = &params[index];
        let side = if param.is_return {
            Side::Return
        } else {
            Side::Entry
        };
        // A specialised clone's own placement overrides the calling convention's.
        let received = match &param.passed {
            Passed::Abi => None,
            Passed::Reg(r) => {
                let size = self.dwarf.ty(param.ty)?.size();
                if size > 8 {
                    return Err(self.not_received(param));
                }
                Some(Place::Regs(vec![(
                    Piece {
                        offset: 0,
                        size,
                        reg: Reg::Int(*r),
                    },
                    0,
                )]))
            }
            Passed::Const(value) if e.path.is_empty() && !e.len => {
                return Ok((Side::Entry, Render::Const(*value)));
            }
            Passed::Const(value) => {
                return Err(Fail::Resolve(format!(
                    "{} is the constant {value} in the copy of {} this program runs                      (the compiler specialised it); capture {} itself",
                    param.name, self.function.name, param.name
                )));
            }
            Passed::Unknown => return Err(self.not_received(param)),
        };
        let mut place = match received {
            Some(place) => place,
            None => match &self.placements[index] {
                Placement::Regs(pieces) => Place::Regs(pieces.iter().map(|p| (*p, 0)).collect()),
                Placement::Stack { offset } => Place::Mem {
                    base: reg_loc(sonde_common::dynlog::reg::RSP),
                    off: *offset,
                },
                Placement::Indirect { reg } => Place::Mem {
                    base: reg_loc(*reg),
                    off: 0,
                },
                Placement::StackIndirect { offset } => Place::Mem {
                    base: stack_loc(*offset)?,
                    off: 0,
                },
            },
        };
        let mut ty_id = param.ty;
        let mut ty = self.dwarf.ty(ty_id)?;
        let mut walked = param.name.clone();
        for step in &e.path {
            match step {
                Step::Field(name) => {
                    // Follow pointers until a struct.
                    let mut hops = 0;
                    while let Type::Pointer { to, opaque, .. } = &ty {
                        let Some(to) = to else {
                            return Err(Fail::Resolve(format!(
                                "{walked} is an untyped pointer ({}); it has no field {name}",
                                ty.name()
                            )));
                        };
                        if *opaque || hops > 4 {
                            return Err(Fail::Resolve(format!(
                                "{walked} ({}) has no fields",
                                ty.name()
                            )));
                        }
                        place = self.deref(place)?;
                        ty_id = *to;
                        ty = self.dwarf.ty(ty_id)?;
                        hops += 1;
                    }
                    let Type::Struct { fields, .. } = &ty else {
                        return Err(Fail::Resolve(format!(
                            "{walked} has type {} which has no field {name}",
                            ty.name()
                        )));
                    };
                    let Some(f) = fields.iter().find(|f| &f.name == name) else {
                        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                        return Err(Fail::Resolve(format!(
                            "{walked} ({}) has no field {name}; its fields are {}",
                            ty.name(),
                            names.join(", ")
                        )));
                    };
                    let (off, fty) = (f.offset, f.ty);
                    let fsize = self.dwarf.ty(fty)?.size();
                    place = field(place, off, fsize)?;
                    ty_id = fty;
                    ty = self.dwarf.ty(ty_id)?;
                    walked = format!("{walked}.{name}");
                }
                Step::Index(i) => {
                    let (elem, base) = match &ty {
                        Type::Array { elem, count, .. } => {
                            if i >= count {
                                return Err(Fail::Resolve(format!(
                                    "{walked} has {count} elements; [{i}] is out of range"
                                )));
                            }
                            (*elem, place.clone())
                        }
                        Type::GoSlice { elem, .. } => {
                            (*elem, self.deref(field(place.clone(), 0, 8)?)?)
                        }
                        Type::RustSlice {
                            elem: Some(elem), ..
                        } => (*elem, self.deref(field(place.clone(), 0, 8)?)?),
                        Type::RustVec {
                            elem: Some(elem),
                            ptr,
                            ..
                        } => (*elem, self.deref(field(place.clone(), *ptr, 8)?)?),
                        other => {
                            return Err(Fail::Resolve(format!(
                                "{walked} has type {} which cannot be indexed",
                                other.name()
                            )));
                        }
                    };
                    let esize = self.dwarf.ty(elem)?.size();
                    place = field(base, i * esize, esize)?;
                    ty_id = elem;
                    ty = self.dwarf.ty(ty_id)?;
                    walked = format!("{walked}[{i}]");
                }
            }
        }
        let render = if e.len {
            match &ty {
                Type::GoString | Type::GoSlice { .. } | Type::RustSlice { .. } => {
                    let p = field(place, 8, 8)?;
                    self.scalar(side, p, Scalar::Int { signed: true }, 8, "int")?
                }
                Type::RustVec { len, .. } => {
                    let p = field(place, *len, 8)?;
                    self.scalar(side, p, Scalar::Int { signed: true }, 8, "usize")?
                }
                Type::Array { count, .. } => Render::Const(*count as i64),
                other => {
                    return Err(Fail::Resolve(format!(
                        "len() needs a string, slice or array; {walked} has type {}",
                        other.name()
                    )));
                }
            }
        } else {
            self.render(side, place, ty_id, 0)?
        };
        Ok((side, render))
    }

    fn slots(&mut self, side: Side) -> &mut Vec<Slot> {
        match side {
            Side::Entry => &mut self.entry,
            Side::Return => &mut self.ret,
        }
    }

    fn push(&mut self, side: Side, slot: Slot) -> Result<(), Fail> {
        let slots = self.slots(side);
        if slots.len() >= MAX_SLOTS {
            return Err(Fail::Budget);
        }
        slots.push(slot);
        Ok(())
    }

    /// The place a pointer value points at.
    fn deref(&self, place: Place) -> Result<Place, Fail> {
        let base = loc_of(&place)?;
        Ok(Place::Mem { base, off: 0 })
    }

    fn scalar(
        &mut self,
        side: Side,
        place: Place,
        kind_: Scalar,
        size: u64,
        ty_name: &str,
    ) -> Result<Render, Fail> {
        let (loc, shift) = match &place {
            Place::Regs(pieces) => match pieces.as_slice() {
                [
                    (
                        Piece {
                            reg: Reg::Int(r), ..
                        },
                        shift,
                    ),
                ] => (reg_loc(*r), *shift),
                [
                    (
                        Piece {
                            reg: Reg::Stack(offset),
                            ..
                        },
                        shift,
                    ),
                ] => (stack_loc(offset + i64::from(*shift))?, 0),
                [
                    (
                        Piece {
                            reg: r @ Reg::Float(_),
                            ..
                        },
                        _,
                    ),
                ] => {
                    return Err(Fail::Unsupported {
                        ty: ty_name.to_owned(),
                        why: format!(
                            "it is passed in {}, and uprobes see no XMM registers; capture it where it is stored in memory (e.g. a field behind a pointer)",
                            reg_name(*r)
                        ),
                    });
                }
                _ => {
                    return Err(Fail::Resolve(
                        "internal: a scalar spread over several registers".into(),
                    ));
                }
            },
            Place::Mem { .. } => (loc_of(&place)?, 0),
        };
        self.push(
            side,
            Slot {
                kind: kind::SCALAR,
                ptr: loc,
                ..Slot::default()
            },
        )?;
        Ok(Render::Scalar {
            kind: kind_,
            size: size.min(8) as u8,
            shift,
        })
    }

    /// A slot reading bytes at `ptr` (+ len elements of `1 << shift` bytes when `len` is given).
    fn bytes(
        &mut self,
        side: Side,
        ptr: Place,
        len: Option<(Place, u8)>,
        slot_kind: u8,
        max: u16,
    ) -> Result<(), Fail> {
        let ptr_loc = loc_of(&ptr)?;
        let (len_loc, len_shift) = match len {
            Some((p, s)) => (loc_of(&p)?, s),
            None => (Loc::default(), 0),
        };
        self.push(
            side,
            Slot {
                kind: slot_kind,
                len_shift,
                max,
                addend: 0,
                ptr: ptr_loc,
                len: len_loc,
            },
        )
    }

    fn render(
        &mut self,
        side: Side,
        place: Place,
        ty_id: TypeId,
        depth: u32,
    ) -> Result<Render, Fail> {
        let ty = self.dwarf.ty(ty_id)?;
        match &ty {
            Type::Int { size, signed, .. } => self.scalar(
                side,
                place,
                Scalar::Int { signed: *signed },
                u64::from(*size),
                ty.name(),
            ),
            Type::Bool { .. } => self.scalar(side, place, Scalar::Bool, 1, ty.name()),
            Type::Float { size, .. } => {
                self.scalar(side, place, Scalar::Float, u64::from(*size), ty.name())
            }
            Type::Pointer { to, opaque, .. } => {
                let pointee = match to {
                    Some(t) if !opaque => Some(self.dwarf.ty(*t)?),
                    _ => None,
                };
                match pointee {
                    Some(Type::Int { size: 1, .. }) if self.c_strings => {
                        self.bytes(side, place, None, kind::CSTR, self.max_bytes)?;
                        Ok(Render::Str)
                    }
                    Some(
                        Type::Struct { .. }
                        | Type::RustVec { .. }
                        | Type::RustEnum { .. }
                        | Type::RustCLike { .. },
                    ) if depth == 0 => {
                        let target = self.deref(place)?;
                        self.render(side, target, to.unwrap_or_default(), depth)
                    }
                    _ => self.scalar(side, place, Scalar::Address, 8, ty.name()),
                }
            }
            Type::GoString => {
                let ptr = field(place.clone(), 0, 8)?;
                let len = field(place, 8, 8)?;
                self.bytes(side, ptr, Some((len, 0)), kind::BYTES, self.max_bytes)?;
                Ok(Render::Str)
            }
            Type::RustSlice { is_str: true, .. } => {
                let ptr = field(place.clone(), 0, 8)?;
                let len = field(place, 8, 8)?;
                self.bytes(side, ptr, Some((len, 0)), kind::BYTES, self.max_bytes)?;
                Ok(Render::Str)
            }
            Type::GoSlice { elem, .. }
            | Type::RustSlice {
                elem: Some(elem), ..
            } => {
                let ptr = field(place.clone(), 0, 8)?;
                let len = field(place, 8, 8)?;
                self.elements(side, ptr, len, *elem)
            }
            // Rust `String`: its bytes as text, like a Go string.
            Type::RustVec {
                ptr,
                len,
                elem: None,
                ..
            } => {
                let data = field(place.clone(), *ptr, 8)?;
                let len = field(place, *len, 8)?;
                self.bytes(side, data, Some((len, 0)), kind::BYTES, self.max_bytes)?;
                Ok(Render::Str)
            }
            Type::RustVec {
                ptr,
                len,
                elem: Some(elem),
                ..
            } => {
                let data = field(place.clone(), *ptr, 8)?;
                let len = field(place, *len, 8)?;
                self.elements(side, data, len, *elem)
            }
            Type::Array {
                elem, count, size, ..
            } => {
                let et = self.dwarf.ty(*elem)?;
                match (scalar_kind(&et), &place) {
                    (Some((k, esize)), Place::Mem { base, off }) if *count > 1 => {
                        let max = (*size).min(u64::from(self.max_bytes)) as u16;
                        self.push(
                            side,
                            Slot {
                                kind: kind::MEMORY,
                                max,
                                addend: *off as i32,
                                ptr: *base,
                                ..Slot::default()
                            },
                        )?;
                        Ok(Render::Elems {
                            kind: k,
                            size: esize as u8,
                        })
                    }
                    _ if *count == 1 => self.render(side, place, *elem, depth),
                    _ => Err(Fail::Unsupported {
                        ty: ty.name().to_owned(),
                        why: "arrays of non-scalar elements are not rendered; capture an element (x[0].Field)".into(),
                    }),
                }
            }
            Type::GoInterface { empty, .. } => {
                let tab = field(place.clone(), 0, 8)?;
                let data = field(place, 8, 8)?;
                // Two scalar slots (type word, data word), then the string the data points at;
                // Render::Iface reads the three in this order.
                self.scalar(side, tab, Scalar::Address, 8, "uintptr")?;
                self.scalar(side, data.clone(), Scalar::Address, 8, "uintptr")?;
                let target = self.deref(data)?;
                let sptr = field(target.clone(), 0, 8)?;
                let slen = field(target, 8, 8)?;
                self.bytes(side, sptr, Some((slen, 0)), kind::BYTES, self.max_bytes)?;
                let types = self.iface_types(*empty);
                Ok(Render::Iface { types })
            }
            Type::Struct { fields, .. } => {
                if depth >= MAX_DEPTH {
                    return Ok(Render::Note("…".into()));
                }
                let mut out = Vec::new();
                let mut truncated = false;
                for f in fields.clone() {
                    let fsize = self.dwarf.ty(f.ty)?.size();
                    let sub = field(place.clone(), f.offset, fsize)?;
                    let mark = self.slots(side).len();
                    match self.render(side, sub, f.ty, depth + 1) {
                        Ok(r) => out.push((f.name.clone(), r)),
                        Err(Fail::Budget) => {
                            self.slots(side).truncate(mark);
                            truncated = true;
                            break;
                        }
                        Err(Fail::Unsupported { why, .. }) => {
                            self.slots(side).truncate(mark);
                            out.push((f.name.clone(), Render::Note(why)));
                        }
                        Err(Fail::Resolve(why)) => {
                            self.slots(side).truncate(mark);
                            out.push((f.name.clone(), Render::Note(why)));
                        }
                        Err(e @ Fail::Dwarf(_)) => return Err(e),
                    }
                }
                if out.iter().all(|(_, r)| r.slots() == 0) && !out.is_empty() && truncated {
                    return Err(Fail::Budget);
                }
                Ok(Render::Struct {
                    fields: out,
                    truncated,
                })
            }
            Type::RustEnum {
                name,
                discr,
                variants,
                ..
            } => {
                if depth >= MAX_DEPTH {
                    return Ok(Render::Note("…".into()));
                }
                let mark = self.slots(side).len();
                match self.rust_enum(side, place, *discr, variants, depth) {
                    // The enum alone needs more than a call's slots: no capture of it fits.
                    Err(Fail::Budget) if mark == 0 => {
                        self.slots(side).truncate(mark);
                        Err(Fail::Unsupported {
                            ty: name.clone(),
                            why: format!(
                                "capturing every variant of {name} takes more than {MAX_SLOTS} values (the fields of every variant are read, whichever one a call holds); capture the other arguments, or trace a function that takes the variant's data"
                            ),
                        })
                    }
                    other => other,
                }
            }
            Type::RustCLike {
                size,
                signed,
                names,
                ..
            } => match self.scalar(
                side,
                place,
                Scalar::Int { signed: *signed },
                u64::from(*size),
                ty.name(),
            )? {
                Render::Scalar { size, shift, .. } => Ok(Render::Named {
                    size,
                    shift,
                    signed: *signed,
                    names: names.clone(),
                }),
                other => Ok(other),
            },
            Type::RustSlice { elem: None, .. } => Err(Fail::Unsupported {
                ty: ty.name().to_owned(),
                why: "slice of unknown element type".into(),
            }),
            Type::Unsupported { name, why } => Err(Fail::Unsupported {
                ty: name.clone(),
                why: why.clone(),
            }),
        }
    }

    /// A Rust enum at `place`: its discriminant, then every variant's fields. The kernel reads all
    /// of them whichever variant the value holds (a plan has no branches); pointers of the
    /// variants not held may be garbage, which only makes their reads fail, and user space shows
    /// the variant the discriminant names. Fields are read at the enum's own depth, so that
    /// `Some(&T)` is followed like `&T`.
    fn rust_enum(
        &mut self,
        side: Side,
        place: Place,
        discr: Option<Discr>,
        variants: &[Variant],
        depth: u32,
    ) -> Result<Render, Fail> {
        let discr = match discr {
            Some(d) => {
                let at = field(place.clone(), d.offset, u64::from(d.size))?;
                let r = self.scalar(
                    side,
                    at,
                    Scalar::Int { signed: false },
                    u64::from(d.size),
                    "discriminant",
                )?;
                Some(Box::new(r))
            }
            None => None,
        };
        let mut out = Vec::with_capacity(variants.len());
        for v in variants {
            let mut fields = Vec::with_capacity(v.fields.len());
            for f in &v.fields {
                let fsize = self.dwarf.ty(f.ty)?.size();
                // `()` and markers: `Ok(())` shows as `Ok`.
                if fsize == 0 {
                    continue;
                }
                let sub = field(place.clone(), f.offset, fsize)?;
                let mark = self.slots(side).len();
                let r = match self.render(side, sub, f.ty, depth) {
                    Ok(r) => r,
                    Err(Fail::Unsupported { why, .. } | Fail::Resolve(why)) => {
                        self.slots(side).truncate(mark);
                        Render::Note(why)
                    }
                    Err(e) => return Err(e),
                };
                fields.push((f.name.clone(), r));
            }
            out.push(VariantRender {
                name: v.name.clone(),
                value: v.value,
                tuple: v.is_tuple(),
                fields,
            });
        }
        Ok(Render::Enum {
            discr,
            variants: out,
        })
    }

    /// The elements of a slice or vector (`ptr`: its data pointer, `len`: its length): one read of
    /// consecutive scalars (bytes as hex), else the length alone.
    fn elements(
        &mut self,
        side: Side,
        ptr: Place,
        len: Place,
        elem: TypeId,
    ) -> Result<Render, Fail> {
        let et = self.dwarf.ty(elem)?;
        match scalar_kind(&et) {
            Some((Scalar::Int { signed: false }, 1)) => {
                self.bytes(side, ptr, Some((len, 0)), kind::BYTES, self.max_bytes)?;
                Ok(Render::Hex)
            }
            Some((k, size)) if size.is_power_of_two() => {
                let shift = size.trailing_zeros() as u8;
                self.bytes(side, ptr, Some((len, shift)), kind::BYTES, self.max_bytes)?;
                Ok(Render::Elems {
                    kind: k,
                    size: size as u8,
                })
            }
            _ => {
                // Elements that need their own reads: show the length.
                let r = self.scalar(side, len, Scalar::Int { signed: true }, 8, "int")?;
                Ok(Render::Struct {
                    fields: vec![("len".into(), r)],
                    truncated: true,
                })
            }
        }
    }

    /// Dynamic types of Go interface values by itab (non-empty) or type descriptor (empty)
    /// address, each with "its data points at a string first".
    fn iface_types(&mut self, empty: bool) -> Arc<BTreeMap<u64, (String, bool)>> {
        if let Some(t) = &self.iface_types {
            return t.clone();
        }
        let symbols = self
            .binary
            .symbols_with_prefix(&["go:itab.", "go.itab.", "type:", "type."]);
        let mut map = BTreeMap::new();
        for (addr, name) in symbols {
            let dynamic = if let Some(rest) = name
                .strip_prefix("go:itab.")
                .or_else(|| name.strip_prefix("go.itab."))
            {
                rest.rsplit_once(',').map_or(rest, |(t, _)| t).to_owned()
            } else if empty {
                match name
                    .strip_prefix("type:")
                    .or_else(|| name.strip_prefix("type."))
                {
                    Some(t) => t.to_owned(),
                    None => continue,
                }
            } else {
                continue;
            };
            let stringy = dynamic == "string"
                || dynamic
                    .strip_prefix('*')
                    .and_then(|s| self.dwarf.go_struct(s))
                    .and_then(|id| self.dwarf.ty(id).ok())
                    .and_then(|t| match t {
                        Type::Struct { fields, .. } => fields.first().map(|f| (f.offset, f.ty)),
                        _ => None,
                    })
                    .is_some_and(|(off, ty)| {
                        off == 0 && matches!(self.dwarf.ty(ty), Ok(Type::GoString))
                    });
            map.insert(addr, (dynamic, stringy));
        }
        let map = Arc::new(map);
        self.iface_types = Some(map.clone());
        map
    }
}

fn scalar_kind(t: &Type) -> Option<(Scalar, u64)> {
    match t {
        Type::Int { size, signed, .. } => Some((Scalar::Int { signed: *signed }, u64::from(*size))),
        Type::Bool { .. } => Some((Scalar::Bool, 1)),
        Type::Float { size, .. } => Some((Scalar::Float, u64::from(*size))),
        Type::Pointer { .. } => Some((Scalar::Address, 8)),
        Type::RustCLike { size, signed, .. } => {
            Some((Scalar::Int { signed: *signed }, u64::from(*size)))
        }
        _ => None,
    }
}

/// The bytes `[off, off + size)` of a value.
fn field(place: Place, off: u64, size: u64) -> Result<Place, Fail> {
    match place {
        Place::Mem { base, off: o } => Ok(Place::Mem {
            base,
            off: o + off as i64,
        }),
        Place::Regs(pieces) => {
            let end = off + size;
            let mut out = Vec::new();
            for (p, shift) in pieces {
                let (ps, pe) = (p.offset, p.offset + p.size);
                if pe <= off || ps >= end {
                    continue;
                }
                if ps >= off {
                    out.push((
                        Piece {
                            offset: ps - off,
                            size: p.size.min(end - ps),
                            reg: p.reg,
                        },
                        shift,
                    ));
                } else {
                    // The field starts inside this register (C: two ints in one eightbyte).
                    let inner = off - ps;
                    out.push((
                        Piece {
                            offset: 0,
                            size: (pe - off).min(size),
                            reg: p.reg,
                        },
                        shift + inner as u8,
                    ));
                }
            }
            Ok(Place::Regs(out))
        }
    }
}

/// A location whose value is the word at `rsp + offset`.
fn stack_loc(offset: i64) -> Result<Loc, Fail> {
    loc_of(&Place::Mem {
        base: reg_loc(sonde_common::dynlog::reg::RSP),
        off: offset,
    })
}

/// A location whose value is the (pointer-sized) value at `place`.
fn loc_of(place: &Place) -> Result<Loc, Fail> {
    match place {
        Place::Regs(pieces) => match pieces.as_slice() {
            [
                (
                    Piece {
                        reg: Reg::Int(r), ..
                    },
                    0,
                ),
            ] => Ok(reg_loc(*r)),
            [
                (
                    Piece {
                        reg: Reg::Stack(offset),
                        ..
                    },
                    0,
                ),
            ] => stack_loc(*offset),
            _ => Err(Fail::Resolve(
                "internal: a pointer that is not in one register".into(),
            )),
        },
        Place::Mem { base, off } => {
            let mut loc = *base;
            let n = loc.n_hops as usize;
            if n >= MAX_HOPS {
                return Err(Fail::Resolve(format!(
                    "the expression follows more than {MAX_HOPS} pointers"
                )));
            }
            loc.hops[n] = i32::try_from(*off)
                .map_err(|_| Fail::Resolve(format!("offset {off} is too large")))?;
            loc.n_hops += 1;
            Ok(loc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_become_lower_case_column_names() {
        assert_eq!(column_name("ID"), "id");
        assert_eq!(column_name("~p0"), "_p0");
        assert_eq!(column_name("9x"), "_9x");
    }

    #[test]
    fn a_field_inside_a_register_keeps_its_byte_shift() {
        let place = Place::Regs(vec![(
            Piece {
                offset: 0,
                size: 8,
                reg: Reg::Int(sonde_common::dynlog::reg::RDI),
            },
            0,
        )]);
        let Ok(Place::Regs(p)) = field(place, 4, 4) else {
            panic!("not in registers");
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1, 4);
        assert_eq!(p[0].0.size, 4);
    }
}
