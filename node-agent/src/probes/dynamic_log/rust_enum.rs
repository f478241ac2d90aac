//! Rust enums from their DWARF. An enum with data is a `DW_TAG_structure_type` holding a
//! `DW_TAG_variant_part`: its `DW_AT_discr` names the member whose bytes say which variant the
//! value holds, and each `DW_TAG_variant` child has a member whose type is the variant's own struct
//! (named like the variant; a tuple variant's fields are `__0`, `__1`, …), with the discriminant
//! value in `DW_AT_discr_value` — except the default variant, which has none and stands for every
//! other value. Niche layouts keep the discriminant inside the dataful variant's payload
//! (`Option<&T>`: the pointer, 0 = `None`; `Option<String>`: a capacity above `isize::MAX`, which
//! one depending on the Rust release), which the DWARF describes the same way. A fieldless enum is a
//! `DW_TAG_enumeration_type` with `DW_TAG_enumerator`s.
use gimli::{AttributeValue, UnitOffset, constants as dw};

use super::dwarf::{Dwarf, R, local_offset};
use super::types::{Discr, Field, Type, TypeId, Variant};

/// A variant as its DIEs give it, before its struct's fields are read.
struct RawVariant {
    name: String,
    value: Option<u64>,
    /// Offset of the variant's member (its struct) inside the enum; 0 in what rustc emits.
    offset: u64,
    ty: Option<TypeId>,
}

/// `value` cut to `size` bytes, as the discriminant's bytes hold it.
fn cut(value: u64, size: u8) -> u64 {
    if size >= 8 {
        value
    } else {
        value & ((1u64 << (u32::from(size) * 8)) - 1)
    }
}

/// A constant attribute (`DW_AT_discr_value`, `DW_AT_const_value`) as its bits.
fn constant(value: AttributeValue<R>) -> Option<u64> {
    match value {
        AttributeValue::Sdata(v) => Some(v as u64),
        other => other.udata_value(),
    }
}

impl Dwarf {
    /// The Rust enum at `at` (a structure type) as a [`Type::RustEnum`]; None when it has no
    /// variant part (a plain struct).
    pub(super) fn rust_enum(
        &mut self,
        unit: &gimli::Unit<R>,
        at: UnitOffset,
        name: &str,
        size: u64,
        depth: u32,
    ) -> Result<Option<Type>, gimli::Error> {
        let mut discr_ref = None;
        // The members directly in the variant part (the discriminant): offset and type by DIE.
        let mut members: Vec<(UnitOffset, u64, Option<TypeId>)> = Vec::new();
        let mut raw = Vec::new();
        let mut found = false;
        {
            let mut tree = unit.entries_tree(Some(at))?;
            let root = tree.root()?;
            let mut children = root.children();
            while let Some(child) = children.next()? {
                if child.entry().tag() != dw::DW_TAG_variant_part {
                    continue;
                }
                found = true;
                discr_ref = match child.entry().attr_value(dw::DW_AT_discr)? {
                    Some(AttributeValue::UnitRef(o)) => Some(o),
                    _ => None,
                };
                let mut parts = child.children();
                while let Some(part) = parts.next()? {
                    let e = part.entry();
                    match e.tag() {
                        dw::DW_TAG_member => members.push((
                            e.offset(),
                            member_offset(e)?,
                            e.attr_value(dw::DW_AT_type)?
                                .and_then(|v| Self::reference(unit, v)),
                        )),
                        dw::DW_TAG_variant => {
                            let value = e.attr_value(dw::DW_AT_discr_value)?.and_then(constant);
                            let mut inner = part.children();
                            while let Some(m) = inner.next()? {
                                let m = m.entry();
                                if m.tag() != dw::DW_TAG_member {
                                    continue;
                                }
                                raw.push(RawVariant {
                                    name: self.name_of(unit, m)?.unwrap_or_default(),
                                    value,
                                    offset: member_offset(m)?,
                                    ty: m
                                        .attr_value(dw::DW_AT_type)?
                                        .and_then(|v| Self::reference(unit, v)),
                                });
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                break;
            }
        }
        if !found {
            return Ok(None);
        }
        let unsupported = |why: String| {
            Ok(Some(Type::Unsupported {
                name: name.to_owned(),
                why,
            }))
        };
        let discr = match discr_ref {
            Some(r) => {
                let Some((_, offset, Some(ty))) = members.iter().find(|(o, _, _)| *o == r) else {
                    return unsupported(format!(
                        "the DWARF of Rust enum {name} names no discriminant member DynamicLog can read"
                    ));
                };
                match self.ty_depth(*ty, depth + 1)? {
                    Type::Int {
                        size: s @ (1 | 2 | 4 | 8),
                        ..
                    } => Some(Discr {
                        offset: *offset,
                        size: s,
                    }),
                    other => {
                        return unsupported(format!(
                            "the discriminant of Rust enum {name} has type {} ({} bytes), not an integer DynamicLog reads",
                            other.name(),
                            other.size()
                        ));
                    }
                }
            }
            None if raw.len() <= 1 => None,
            None => {
                return unsupported(format!(
                    "Rust enum {name} has {} variants but its DWARF names no discriminant",
                    raw.len()
                ));
            }
        };
        let mut variants = Vec::with_capacity(raw.len());
        for v in raw {
            let fields = match v.ty {
                Some(ty) => self.fields_at(ty)?,
                None => Vec::new(),
            };
            variants.push(Variant {
                name: v.name,
                value: v.value.map(|x| cut(x, discr.map_or(8, |d| d.size))),
                fields: fields
                    .into_iter()
                    .map(|f| Field {
                        offset: f.offset + v.offset,
                        ..f
                    })
                    .collect(),
            });
        }
        Ok(Some(Type::RustEnum {
            name: name.to_owned(),
            size,
            discr,
            variants,
        }))
    }

    /// The fieldless Rust enum at `at` (a `DW_TAG_enumeration_type`) as a [`Type::RustCLike`].
    pub(super) fn rust_c_like(
        &self,
        unit: &gimli::Unit<R>,
        at: UnitOffset,
        name: String,
        size: u8,
        signed: bool,
    ) -> Result<Type, gimli::Error> {
        let mut names = Vec::new();
        let mut tree = unit.entries_tree(Some(at))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_enumerator {
                continue;
            }
            let (Some(value), Some(variant)) = (
                e.attr_value(dw::DW_AT_const_value)?.and_then(constant),
                self.name_of(unit, e)?,
            ) else {
                continue;
            };
            names.push((cut(value, size), variant));
        }
        Ok(Type::RustCLike {
            name,
            size,
            signed,
            names,
        })
    }

    /// The members of the struct type `ty` (a variant's struct), in any unit.
    fn fields_at(&mut self, ty: TypeId) -> Result<Vec<Field>, gimli::Error> {
        let unit = self.unit_for(ty)?;
        let Some(local) = local_offset(&unit, ty) else {
            return Ok(Vec::new());
        };
        let tag = unit.entry(local)?.tag();
        if tag != dw::DW_TAG_structure_type {
            return Ok(Vec::new());
        }
        self.fields(&unit, local)
    }
}

fn member_offset(e: &gimli::DebuggingInformationEntry<'_, '_, R>) -> Result<u64, gimli::Error> {
    Ok(e.attr_value(dw::DW_AT_data_member_location)?
        .and_then(|v| v.udata_value())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::cut;
    use crate::probes::dynamic_log::binary::Binary;
    use crate::probes::dynamic_log::dwarf::Dwarf;
    use crate::probes::dynamic_log::types::{Discr, Type};

    /// A function taking each kind of Rust enum, compiled with `rustc -g` (needs rustc on PATH,
    /// as the dynamic_log integration tests do).
    const SOURCE: &str = r#"
pub struct Point { pub x: i32, pub y: i32 }
pub enum Shape { Circle { r: u32 }, Rect(u32, u32), Empty }
pub enum Color { Red, Green = 5, Blue }
#[inline(never)]
#[no_mangle]
pub fn take(a: Option<String>, b: Option<u64>, c: Option<&Point>, d: &Shape, e: Color) -> Result<u32, String> {
    std::hint::black_box((a, b, c, d, e as u8));
    Ok(1)
}
fn main() {
    let p = Point { x: 1, y: 2 };
    let _ = std::hint::black_box(take(None, Some(1), Some(&p), &Shape::Empty, Color::Blue));
}
"#;

    /// The types of `take`'s parameters (then its result), by name, and what pointer parameters
    /// point at (as `*name`).
    fn types() -> Vec<(String, Type)> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("enums.rs");
        let exe = dir.path().join("enums");
        std::fs::write(&src, SOURCE).unwrap();
        let out = Command::new("rustc")
            .args(["--edition", "2021", "-g", "-C", "opt-level=1", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run rustc (install it: scripts/setup): {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let binary = Binary::read(&exe, Path::new("/")).unwrap();
        let mut dwarf = Dwarf::load(&binary).unwrap();
        let entry = dwarf.find("enums::take").unwrap();
        let f = dwarf.function(&entry).unwrap();
        let mut out = Vec::new();
        for p in &f.params {
            let t = dwarf.ty(p.ty).unwrap();
            if let Type::Pointer { to: Some(to), .. } = &t {
                out.push((format!("*{}", p.name), dwarf.ty(*to).unwrap()));
            }
            out.push((p.name.clone(), t));
        }
        out
    }

    /// `(name, value, field names and offsets)` of each variant.
    type Shown = Vec<(String, Option<u64>, Vec<(String, u64)>)>;

    fn shape(t: &Type) -> (Option<Discr>, Shown) {
        let Type::RustEnum {
            discr, variants, ..
        } = t
        else {
            panic!("not a Rust enum: {t:?}");
        };
        let shown = variants
            .iter()
            .map(|v| {
                let fields = v
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), f.offset))
                    .collect();
                (v.name.clone(), v.value, fields)
            })
            .collect();
        (*discr, shown)
    }

    fn v(
        name: &str,
        value: Option<u64>,
        fields: &[(&str, u64)],
    ) -> (String, Option<u64>, Vec<(String, u64)>) {
        let fields = fields.iter().map(|(n, o)| ((*n).to_owned(), *o)).collect();
        (name.to_owned(), value, fields)
    }

    #[test]
    fn rust_enums_are_read_with_their_discriminant_and_every_variants_fields() {
        let types = types();
        let ty = |name: &str| {
            &types
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no parameter {name} in {types:?}"))
                .1
        };
        let word = Some(Discr { offset: 0, size: 8 });
        // Niche: None is a capacity no String has (above isize::MAX; which one depends on the
        // Rust release) in the String Some holds.
        let niche = match shape(ty("a")).1.first() {
            Some((_, Some(n), _)) if *n > i64::MAX as u64 => *n,
            _ => panic!("no niche for None in {:?}", ty("a")),
        };
        assert_eq!(
            shape(ty("a")),
            (
                word,
                vec![v("None", Some(niche), &[]), v("Some", None, &[("__0", 0)])]
            )
        );
        assert_eq!(ty("a").size(), 24);
        // A tag of its own.
        assert_eq!(
            shape(ty("b")),
            (
                word,
                vec![v("None", Some(0), &[]), v("Some", Some(1), &[("__0", 8)])]
            )
        );
        // The pointer itself: 0 is None.
        assert_eq!(
            shape(ty("c")),
            (
                word,
                vec![v("None", Some(0), &[]), v("Some", None, &[("__0", 0)])]
            )
        );
        // Ok is the niche of Err's String.
        assert_eq!(
            shape(ty("~r0")),
            (
                word,
                vec![
                    v("Ok", Some(niche), &[("__0", 8)]),
                    v("Err", None, &[("__0", 0)]),
                ]
            )
        );
        // A user enum: struct, tuple and unit variants after a u32 tag.
        assert_eq!(
            shape(ty("*d")),
            (
                Some(Discr { offset: 0, size: 4 }),
                vec![
                    v("Circle", Some(0), &[("r", 4)]),
                    v("Rect", Some(1), &[("__0", 4), ("__1", 8)]),
                    v("Empty", Some(2), &[]),
                ]
            )
        );
        assert_eq!(
            ty("e"),
            &Type::RustCLike {
                name: "Color".into(),
                size: 1,
                signed: false,
                names: vec![(0, "Red".into()), (5, "Green".into()), (6, "Blue".into())],
            }
        );
    }

    #[test]
    fn discriminant_values_are_cut_to_the_discriminants_size() {
        assert_eq!(cut(0x1_0000_00ff, 1), 0xff);
        assert_eq!(cut(-1i64 as u64, 4), 0xffff_ffff);
        assert_eq!(cut(0x8000_0000_0000_0000, 8), 0x8000_0000_0000_0000);
    }
}
