//! The types of traced values, as far as capturing and rendering them needs: read from DWARF by
//! [`super::dwarf`], language details (Go strings, slices, interfaces; Rust `&str`, `String`, `Vec`,
//! enums) already recognised.

/// Offset of the type's DIE in `.debug_info`: a stable identity for memoising and cycles.
pub type TypeId = usize;

#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    /// Integers, C enums and characters.
    Int {
        name: String,
        size: u8,
        signed: bool,
    },
    Float {
        name: String,
        size: u8,
    },
    Bool {
        name: String,
    },
    /// Pointers (Go maps, channels and funcs too: they are one word). `to` is None for `void *`.
    Pointer {
        name: String,
        to: Option<TypeId>,
        /// Go maps, channels, funcs: not dereferenced automatically.
        opaque: bool,
    },
    Struct {
        name: String,
        size: u64,
        fields: Vec<Field>,
    },
    Array {
        name: String,
        elem: TypeId,
        count: u64,
        size: u64,
    },
    /// Go `string`: data pointer at 0, length at 8.
    GoString,
    /// Go slice: data pointer at 0, length at 8, capacity at 16.
    GoSlice {
        name: String,
        elem: TypeId,
    },
    /// Go interface: type word (itab or type descriptor) at 0, data pointer at 8.
    GoInterface {
        name: String,
        empty: bool,
    },
    /// Rust `&str` / `&[T]`: data pointer at 0, length at 8.
    RustSlice {
        name: String,
        elem: Option<TypeId>,
        is_str: bool,
    },
    /// Rust `String` and `Vec<T>`: an owned buffer whose data pointer and length sit in nested
    /// structs that differ across Rust versions, so [`super::dwarf`] finds them by member name.
    RustVec {
        name: String,
        size: u64,
        /// Byte offset of the data pointer inside the value.
        ptr: u64,
        /// Byte offset of the length (in elements) inside the value.
        len: u64,
        /// The element type; None for `String`, whose bytes are UTF-8 text.
        elem: Option<TypeId>,
    },
    /// A Rust enum with data (`Option<T>`, `Result<T, E>`, user enums): read by
    /// [`super::rust_enum`] from its `DW_TAG_variant_part`.
    RustEnum {
        name: String,
        size: u64,
        /// Where the discriminant is; None when there is one variant only.
        discr: Option<Discr>,
        variants: Vec<Variant>,
    },
    /// A fieldless Rust enum (`enum Color { Red, Green }`): an integer shown by variant name.
    RustCLike {
        name: String,
        size: u8,
        signed: bool,
        /// Values (the integer's bits) and their variant names.
        names: Vec<(u64, String)>,
    },
    /// A type DynamicLog cannot capture; `why` says what it is.
    Unsupported {
        name: String,
        why: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub offset: u64,
    pub ty: TypeId,
}

/// The bytes of a Rust enum that say which variant it holds: a tag of its own, or (niche layouts)
/// a word of the dataful variant's payload (`Option<&T>`: the pointer, 0 = `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discr {
    pub offset: u64,
    /// 1, 2, 4 or 8.
    pub size: u8,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    /// The discriminant value (`DW_AT_discr_value`, cut to the discriminant's size); None for the
    /// default variant, the one every other value means (the dataful variant of a niche layout).
    pub value: Option<u64>,
    /// Its fields, offsets from the enum's start; tuple variants' are named `__0`, `__1`, ….
    pub fields: Vec<Field>,
}

impl Variant {
    /// A tuple variant (`Some(x)`, `Rect(w, h)`): its fields are `__0`, `__1`, ….
    pub fn is_tuple(&self) -> bool {
        !self.fields.is_empty() && self.fields.iter().all(|f| f.name.starts_with("__"))
    }
}

impl Type {
    pub fn name(&self) -> &str {
        match self {
            Type::Int { name, .. }
            | Type::Float { name, .. }
            | Type::Bool { name }
            | Type::Pointer { name, .. }
            | Type::Struct { name, .. }
            | Type::Array { name, .. }
            | Type::GoSlice { name, .. }
            | Type::GoInterface { name, .. }
            | Type::RustSlice { name, .. }
            | Type::RustVec { name, .. }
            | Type::RustEnum { name, .. }
            | Type::RustCLike { name, .. }
            | Type::Unsupported { name, .. } => name,
            Type::GoString => "string",
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Type::Int { size, .. } | Type::Float { size, .. } | Type::RustCLike { size, .. } => {
                u64::from(*size)
            }
            Type::Bool { .. } => 1,
            Type::Pointer { .. } => 8,
            Type::Struct { size, .. }
            | Type::Array { size, .. }
            | Type::RustVec { size, .. }
            | Type::RustEnum { size, .. } => *size,
            Type::GoString | Type::GoInterface { .. } | Type::RustSlice { .. } => 16,
            Type::GoSlice { .. } => 24,
            Type::Unsupported { .. } => 0,
        }
    }
}
