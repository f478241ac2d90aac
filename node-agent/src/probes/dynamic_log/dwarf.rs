//! The DWARF of a target binary (gimli): an index of its functions, a function's parameters and
//! results in declaration order, the types they have, and Go's `runtime.g` layout.
//!
//! Parameter *locations* are not taken from `DW_AT_location` (Go's are location lists valid only
//! after the prologue); [`super::goabi`] and [`super::sysv`] replay the calling convention instead.
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use gimli::{
    AttributeValue, DebugInfoOffset, DwAt, DwTag, Reader as _, UnitOffset, constants as dw,
};
use object::{Object, ObjectSection};

use super::binary::{Binary, BinaryError};
use super::types::{Field, Type, TypeId};

pub(super) type R = gimli::EndianRcSlice<gimli::RunTimeEndian>;

/// Go's vendor attributes.
const DW_AT_GO_KIND: DwAt = DwAt(0x2900);
const DW_AT_GO_ELEM: DwAt = DwAt(0x2902);
/// `reflect.Kind` values in `DW_AT_go_kind`.
const GO_KIND_CHAN: u64 = 18;
const GO_KIND_FUNC: u64 = 19;
const GO_KIND_INTERFACE: u64 = 20;
const GO_KIND_MAP: u64 = 21;
const GO_KIND_SLICE: u64 = 23;
const GO_KIND_STRING: u64 = 24;

/// How many names "did you mean" offers.
const SUGGESTIONS: usize = 5;
/// How many callers of an inlined function messages name.
const CALLERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error("cannot read the DWARF of {path}: {source}; the debug information looks corrupt")]
    Gimli {
        path: String,
        #[source]
        source: gimli::Error,
    },
    #[error("function {function} not found in {path}{hint}")]
    NotFound {
        function: String,
        path: String,
        hint: String,
    },
    #[error(
        "spec.function {function:?}: {function} is inlined into every caller in {path} ({sites}{callers}) and has no code of its own to trace; build it with -fno-inline or mark it __attribute__((noinline)) (Go: //go:noinline, Rust: #[inline(never)]), or trace {caller} instead"
    )]
    Inlined {
        function: String,
        path: String,
        sites: String,
        callers: String,
        caller: String,
    },
    #[error(
        "function {function} is ambiguous in {path}: it matches {candidates}; write the full name"
    )]
    Ambiguous {
        function: String,
        path: String,
        candidates: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Go,
    C,
    Cpp,
    Rust,
    Other,
}

/// A function of the index: a concrete (out-of-line) instance with code.
#[derive(Clone, Debug)]
pub struct FunctionEntry {
    pub name: String,
    pub low_pc: u64,
    pub high_pc: u64,
    unit: usize,
    die: UnitOffset,
    /// The abstract instance this is the code of (a function inlined elsewhere too).
    abstract_origin: Option<usize>,
    /// Its linkage (mangled) name (Rust, C++).
    linkage: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: TypeId,
    /// A Go result (`DW_AT_variable_parameter`), or a C/Rust return value (named `~r0`).
    pub is_return: bool,
    /// How the traced copy of the function receives it.
    pub passed: Passed,
}

/// How the traced code receives a parameter. A function's code normally follows the calling
/// convention of its declared signature; GCC's specialised clones (`f.constprop.0`, `f.isra.0`)
/// do not: a parameter every caller passes as the same constant is dropped and the later ones
/// move up a register. The clone's own DWARF (`DW_AT_const_value`, `DW_AT_location`) says where
/// each one went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Passed {
    /// As the calling convention places the declared parameters.
    Abi,
    /// In this register at the entry (a `pt_regs` word index, [`sonde_common::dynlog::reg`]).
    Reg(u8),
    /// Not passed: this copy of the function was compiled for this constant value.
    Const(i64),
    /// Not passed, or somewhere DynamicLog does not follow (the clone computes it, or keeps only
    /// a part of it).
    Unknown,
}

/// What the planner needs of the traced function.
#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub low_pc: u64,
    pub high_pc: u64,
    pub language: Language,
    pub producer: String,
    /// Arguments, then (Go) results, in declaration order; C/Rust get one synthetic `~r0` result.
    pub params: Vec<Param>,
}

/// The loaded DWARF and its function index.
pub struct Dwarf {
    path: String,
    dwarf: gimli::Dwarf<R>,
    /// Unit headers sorted by offset.
    headers: Vec<(usize, gimli::UnitHeader<R>)>,
    units: HashMap<usize, Rc<gimli::Unit<R>>>,
    types: HashMap<TypeId, Type>,
    functions: Vec<FunctionEntry>,
    runtime_g: Option<TypeId>,
    /// Go struct types by name (for the dynamic types of interface values).
    go_structs: HashMap<String, TypeId>,
    /// Rust's `alloc::string::String` and `alloc::vec::Vec<…>` types (read as [`Type::RustVec`]).
    rust_vecs: HashSet<TypeId>,
    /// Inlined copies by the abstract instance they are copies of.
    inlined: HashMap<usize, Inlined>,
    /// Names of the abstract instances of inlined functions (inlined somewhere), with their
    /// offsets: the functions the compiler may have left no code of their own for.
    abstracts: Vec<(String, usize)>,
}

/// Where the compiler inlined a function.
#[derive(Clone, Debug, Default)]
struct Inlined {
    /// Inlined copies (DW_TAG_inlined_subroutine).
    sites: u32,
    /// Functions (indexes) the first copies are inside, up to [`CALLERS`].
    callers: Vec<usize>,
}

fn section_data(file: &object::File<'_>, id: gimli::SectionId) -> Rc<[u8]> {
    file.section_by_name(id.name())
        .and_then(|s| s.uncompressed_data().ok())
        .map_or_else(|| Rc::from(&[][..]), |d| Rc::from(&*d))
}

impl Dwarf {
    /// Loads the sections and indexes every function with code (one pass over all DIEs).
    pub fn load(binary: &Binary) -> Result<Dwarf, DwarfError> {
        let file = binary.dwarf_object()?;
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let path = binary.dwarf_path().display().to_string();
        let load = |id: gimli::SectionId| -> Result<R, gimli::Error> {
            Ok(gimli::EndianRcSlice::new(section_data(&file, id), endian))
        };
        let dwarf = gimli::Dwarf::load(load).map_err(|source| DwarfError::Gimli {
            path: path.clone(),
            source,
        })?;
        let mut me = Dwarf {
            path,
            dwarf,
            headers: Vec::new(),
            units: HashMap::new(),
            types: HashMap::new(),
            functions: Vec::new(),
            runtime_g: None,
            go_structs: HashMap::new(),
            rust_vecs: HashSet::new(),
            inlined: HashMap::new(),
            abstracts: Vec::new(),
        };
        me.index().map_err(|source| DwarfError::Gimli {
            path: me.path.clone(),
            source,
        })?;
        Ok(me)
    }

    fn index(&mut self) -> Result<(), gimli::Error> {
        let mut headers = self.dwarf.units();
        while let Some(header) = headers.next()? {
            let Some(start) = header.offset().as_debug_info_offset() else {
                continue;
            };
            self.headers.push((start.0, header));
        }
        self.headers.sort_by_key(|(o, _)| *o);
        let mut functions = Vec::new();
        let mut structs = HashMap::new();
        let mut rust_vecs = HashSet::new();
        let mut inlined: HashMap<usize, Inlined> = HashMap::new();
        let mut abstracts: Vec<(usize, Option<String>)> = Vec::new();
        // Rust and C++: qualified names of subprogram declarations (a method's is inside its
        // type: `prog::Point::scaled`), and of functions whose code names them only through
        // DW_AT_specification / DW_AT_abstract_origin, fixed up once every unit is read.
        let mut declarations: HashMap<usize, String> = HashMap::new();
        let mut declared_by: HashMap<usize, usize> = HashMap::new();
        let mut named_by: Vec<(usize, usize)> = Vec::new();
        // Linkage (mangled) names of Rust and C++ declarations and abstract instances, and the
        // functions whose code takes its linkage name from one of them.
        let mut linkages: HashMap<usize, String> = HashMap::new();
        let mut linked_by: Vec<(usize, usize)> = Vec::new();
        for index in 0..self.headers.len() {
            let unit = self.unit_at(index)?;
            let language = language_of(&unit);
            let mut entries = unit.entries();
            let mut depth = 0isize;
            // Enclosing namespaces (Rust, C++), with the depth they were seen at.
            let mut scopes: Vec<(isize, String)> = Vec::new();
            // The function with code whose entries these are (its depth, its index), the caller
            // of the inlined copies inside it.
            let mut enclosing: Option<(isize, usize)> = None;
            while let Some((delta, entry)) = entries.next_dfs()? {
                depth += delta;
                while scopes.last().is_some_and(|(d, _)| *d >= depth) {
                    scopes.pop();
                }
                if enclosing.is_some_and(|(d, _)| d >= depth) {
                    enclosing = None;
                }
                match entry.tag() {
                    dw::DW_TAG_inlined_subroutine => {
                        if let Some(origin) = entry
                            .attr_value(dw::DW_AT_abstract_origin)?
                            .and_then(|v| Self::reference(&unit, v))
                        {
                            let site = inlined.entry(origin).or_default();
                            site.sites += 1;
                            if let Some((_, caller)) = enclosing
                                && !site.callers.contains(&caller)
                                && site.callers.len() < CALLERS
                            {
                                site.callers.push(caller);
                            }
                        }
                    }
                    dw::DW_TAG_namespace => {
                        let name = self.name_of(&unit, entry)?.unwrap_or_default();
                        scopes.push((depth, name));
                    }
                    dw::DW_TAG_structure_type if language == Language::Go => {
                        if let Some(name) = self.name_of(&unit, entry)?
                            && let Some(o) = entry.offset().to_debug_info_offset(&unit.header)
                        {
                            structs.entry(name).or_insert(o.0);
                        }
                    }
                    dw::DW_TAG_structure_type
                    | dw::DW_TAG_union_type
                    | dw::DW_TAG_enumeration_type
                    | dw::DW_TAG_class_type
                        if matches!(language, Language::Rust | Language::Cpp) =>
                    {
                        if let Some(name) = self.name_of(&unit, entry)? {
                            if language == Language::Rust
                                && (name == "String" || name.starts_with("Vec<"))
                                && let Some(o) = entry.offset().to_debug_info_offset(&unit.header)
                            {
                                let path: Vec<&str> =
                                    scopes.iter().map(|(_, s)| s.as_str()).collect();
                                let path = path.join("::");
                                if (path == "alloc::string" && name == "String")
                                    || (path == "alloc::vec" && name.starts_with("Vec<"))
                                {
                                    rust_vecs.insert(o.0);
                                }
                            }
                            scopes.push((depth, name));
                        }
                    }
                    dw::DW_TAG_subprogram => {
                        let qualified = matches!(language, Language::Rust | Language::Cpp);
                        let offset = entry
                            .offset()
                            .to_debug_info_offset(&unit.header)
                            .map(|o| o.0);
                        let Some(low_pc) = self.low_pc(&unit, entry)? else {
                            // The abstract instance of a function the compiler inlined: its
                            // name, for saying so when it has no code of its own.
                            if matches!(
                                entry.attr_value(dw::DW_AT_inline)?,
                                Some(AttributeValue::Inline(
                                    dw::DW_INL_inlined | dw::DW_INL_declared_inlined
                                ))
                            ) && let Some(offset) = offset
                            {
                                let name = match self.name_of(&unit, entry)? {
                                    Some(name) if qualified => {
                                        let mut full: Vec<&str> =
                                            scopes.iter().map(|(_, s)| s.as_str()).collect();
                                        full.push(&name);
                                        Some(full.join("::"))
                                    }
                                    other => other,
                                };
                                abstracts.push((offset, name));
                            }
                            if qualified && let Some(offset) = offset {
                                if let Some(linkage) = self.linkage_name(&unit, entry)? {
                                    linkages.insert(offset, linkage);
                                }
                                if let Some(name) = self.name_of(&unit, entry)? {
                                    let mut full: Vec<&str> =
                                        scopes.iter().map(|(_, s)| s.as_str()).collect();
                                    full.push(&name);
                                    declarations.insert(offset, full.join("::"));
                                } else if let Some(origin) = self.origin(&unit, entry)? {
                                    declared_by.insert(offset, origin);
                                }
                            }
                            continue;
                        };
                        let high_pc = match entry.attr_value(dw::DW_AT_high_pc)? {
                            Some(AttributeValue::Udata(n)) => low_pc + n,
                            Some(v) => self.dwarf.attr_address(&unit, v)?.unwrap_or(low_pc),
                            None => low_pc,
                        };
                        let Some(name) = self.function_name(&unit, entry)? else {
                            continue;
                        };
                        if qualified
                            && self.name_of(&unit, entry)?.is_none()
                            && let Some(origin) = self.origin(&unit, entry)?
                        {
                            named_by.push((functions.len(), origin));
                        }
                        let linkage = if qualified {
                            let own = self.linkage_name(&unit, entry)?;
                            if own.is_none()
                                && let Some(origin) = self.origin(&unit, entry)?
                            {
                                linked_by.push((functions.len(), origin));
                            }
                            own
                        } else {
                            None
                        };
                        let name = if matches!(language, Language::Rust | Language::Cpp)
                            && !scopes.is_empty()
                        {
                            let mut full: Vec<&str> =
                                scopes.iter().map(|(_, s)| s.as_str()).collect();
                            full.push(&name);
                            full.join("::")
                        } else {
                            name
                        };
                        let abstract_origin = entry
                            .attr_value(dw::DW_AT_abstract_origin)?
                            .and_then(|v| Self::reference(&unit, v));
                        enclosing = Some((depth, functions.len()));
                        functions.push(FunctionEntry {
                            name,
                            low_pc,
                            high_pc,
                            unit: index,
                            die: entry.offset(),
                            abstract_origin,
                            linkage,
                        });
                    }
                    _ => {}
                }
            }
        }
        let resolve = |mut origin: usize| {
            for _ in 0..4 {
                if let Some(name) = declarations.get(&origin) {
                    return Some(name.clone());
                }
                origin = *declared_by.get(&origin)?;
            }
            None
        };
        for (index, origin) in named_by {
            if let Some(name) = resolve(origin) {
                functions[index].name = name;
            }
        }
        for (index, mut origin) in linked_by {
            for _ in 0..4 {
                if let Some(linkage) = linkages.get(&origin) {
                    functions[index].linkage = Some(linkage.clone());
                    break;
                }
                match declared_by.get(&origin) {
                    Some(next) => origin = *next,
                    None => break,
                }
            }
        }
        // Only functions inlined somewhere matter: the others are found by their code.
        self.abstracts = abstracts
            .into_iter()
            .filter(|(offset, _)| inlined.contains_key(offset))
            .filter_map(|(offset, name)| Some((name.or_else(|| resolve(offset))?, offset)))
            .collect();
        self.inlined = inlined;
        self.functions = functions;
        self.runtime_g = structs.get("runtime.g").copied();
        self.go_structs = structs;
        self.rust_vecs = rust_vecs;
        Ok(())
    }

    fn unit_at(&mut self, index: usize) -> Result<Rc<gimli::Unit<R>>, gimli::Error> {
        let (start, header) = &self.headers[index];
        if let Some(unit) = self.units.get(start) {
            return Ok(unit.clone());
        }
        let unit = Rc::new(self.dwarf.unit(header.clone())?);
        self.units.insert(*start, unit.clone());
        Ok(unit)
    }

    /// The unit that contains the DIE at `offset`.
    pub(super) fn unit_for(&mut self, offset: usize) -> Result<Rc<gimli::Unit<R>>, gimli::Error> {
        let index = self
            .headers
            .partition_point(|(start, _)| *start <= offset)
            .checked_sub(1)
            .ok_or(gimli::Error::NoEntryAtGivenOffset)?;
        self.unit_at(index)
    }

    fn low_pc(
        &self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<'_, '_, R>,
    ) -> Result<Option<u64>, gimli::Error> {
        match entry.attr_value(dw::DW_AT_low_pc)? {
            Some(v) => Ok(self.dwarf.attr_address(unit, v)?.filter(|a| *a != 0)),
            None => Ok(None),
        }
    }

    fn linkage_name(
        &self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<'_, '_, R>,
    ) -> Result<Option<String>, gimli::Error> {
        for at in [dw::DW_AT_linkage_name, dw::DW_AT_MIPS_linkage_name] {
            if let Some(v) = entry.attr_value(at)? {
                let s = self.dwarf.attr_string(unit, v)?;
                return Ok(Some(s.to_string_lossy()?.into_owned()));
            }
        }
        Ok(None)
    }

    pub(super) fn name_of(
        &self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<'_, '_, R>,
    ) -> Result<Option<String>, gimli::Error> {
        match entry.attr_value(dw::DW_AT_name)? {
            Some(v) => {
                let s = self.dwarf.attr_string(unit, v)?;
                Ok(Some(s.to_string_lossy()?.into_owned()))
            }
            None => Ok(None),
        }
    }

    /// Global offset of a reference attribute.
    pub(super) fn reference(unit: &gimli::Unit<R>, value: AttributeValue<R>) -> Option<usize> {
        match value {
            AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
            AttributeValue::DebugInfoRef(DebugInfoOffset(o)) => Some(o),
            _ => None,
        }
    }

    /// A subprogram's name, from itself or its abstract origin / specification.
    fn function_name(
        &mut self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<'_, '_, R>,
    ) -> Result<Option<String>, gimli::Error> {
        if let Some(name) = self.name_of(unit, entry)? {
            return Ok(Some(name));
        }
        match self.origin(unit, entry)? {
            Some(origin) => self.name_at(origin),
            None => Ok(None),
        }
    }

    fn origin(
        &self,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<'_, '_, R>,
    ) -> Result<Option<usize>, gimli::Error> {
        for at in [dw::DW_AT_abstract_origin, dw::DW_AT_specification] {
            if let Some(v) = entry.attr_value(at)? {
                return Ok(Self::reference(unit, v));
            }
        }
        Ok(None)
    }

    fn name_at(&mut self, offset: usize) -> Result<Option<String>, gimli::Error> {
        let unit = self.unit_for(offset)?;
        let Some(local) = local_offset(&unit, offset) else {
            return Ok(None);
        };
        let entry = unit.entry(local)?;
        self.name_of(&unit, &entry)
    }

    /// Finds `query`: an exact name, else a unique whole-word suffix (`PlaceOrder`,
    /// `(*Server).PlaceOrder`, `module::func`).
    pub fn find(&self, query: &str) -> Result<FunctionEntry, DwarfError> {
        let query = query.trim();
        let mut exact: Vec<&FunctionEntry> =
            self.functions.iter().filter(|f| f.name == query).collect();
        if exact.is_empty() && is_mangled(query) {
            exact = self.by_linkage_name(query);
        }
        let matches = if exact.is_empty() {
            self.functions
                .iter()
                .filter(|f| is_word_suffix(&f.name, query))
                .collect()
        } else {
            exact
        };
        let mut distinct: Vec<&FunctionEntry> = Vec::new();
        for m in matches {
            if !distinct
                .iter()
                .any(|d| d.name == m.name && d.low_pc == m.low_pc)
            {
                distinct.push(m);
            }
        }
        match distinct.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(match self.inlined_only(query) {
                Some((sites, callers)) => DwarfError::Inlined {
                    function: query.to_owned(),
                    path: self.path.clone(),
                    sites: plural(sites, "call site"),
                    caller: match callers.first() {
                        Some(c) => format!("its caller {c}"),
                        None => "its callers".into(),
                    },
                    callers: in_callers(&callers),
                },
                None => DwarfError::NotFound {
                    function: query.to_owned(),
                    path: self.path.clone(),
                    hint: self.suggest(query),
                },
            }),
            many => {
                let mut names: Vec<String> = many
                    .iter()
                    .map(|f| format!("{} at {:#x}", f.name, f.low_pc))
                    .collect();
                names.truncate(SUGGESTIONS);
                Err(DwarfError::Ambiguous {
                    function: query.to_owned(),
                    path: self.path.clone(),
                    candidates: names.join(", "),
                })
            }
        }
    }

    /// Functions whose linkage name is `symbol` (a Rust `_ZN…E` or `_R…` symbol, a C++ `_Z…`
    /// one), else, for a Rust legacy symbol, the same path with another hash (another build).
    fn by_linkage_name(&self, symbol: &str) -> Vec<&FunctionEntry> {
        let exact: Vec<&FunctionEntry> = self
            .functions
            .iter()
            .filter(|f| f.linkage.as_deref() == Some(symbol))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        let Some(path) = without_rust_hash(symbol) else {
            return Vec::new();
        };
        self.functions
            .iter()
            .filter(|f| {
                f.linkage
                    .as_deref()
                    .and_then(without_rust_hash)
                    .is_some_and(|p| p == path)
            })
            .collect()
    }

    /// Where a function with code of its own is inlined too: `(copies, names of the functions
    /// they are in)`; None when it is not.
    pub fn inlined(&self, f: &FunctionEntry) -> Option<(u32, Vec<String>)> {
        let inlined = self.inlined.get(&f.abstract_origin?)?;
        Some((inlined.sites, self.caller_names(inlined)))
    }

    /// `query` names (exactly, else as a unique word suffix) a function that has no code of its
    /// own, only inlined copies: `(copies, names of the functions they are in)`.
    fn inlined_only(&self, query: &str) -> Option<(u32, Vec<String>)> {
        let exact: Vec<usize> = self
            .abstracts
            .iter()
            .filter(|(name, _)| name == query)
            .map(|(_, o)| *o)
            .collect();
        let found = if exact.is_empty() {
            self.abstracts
                .iter()
                .filter(|(name, _)| is_word_suffix(name, query))
                .map(|(_, o)| *o)
                .collect()
        } else {
            exact
        };
        let mut sites = 0;
        let mut callers = Vec::new();
        for offset in found {
            let Some(inlined) = self.inlined.get(&offset) else {
                continue;
            };
            sites += inlined.sites;
            for name in self.caller_names(inlined) {
                if !callers.contains(&name) {
                    callers.push(name);
                }
            }
        }
        (sites > 0).then_some((sites, callers))
    }

    fn caller_names(&self, inlined: &Inlined) -> Vec<String> {
        let mut names: Vec<String> = inlined
            .callers
            .iter()
            .filter_map(|i| self.functions.get(*i))
            .map(|f| f.name.clone())
            .collect();
        if inlined.sites as usize > names.len() && names.len() == CALLERS {
            names.push("…".into());
        }
        names
    }

    /// "Did you mean" for `query`, as the end of a NotFound message.
    fn suggest(&self, query: &str) -> String {
        let names = suggestions(self.functions.iter().map(|f| f.name.as_str()), query);
        if names.is_empty() {
            "; no function has a similar name (is it inlined? mark it //go:noinline or noinline)"
                .to_owned()
        } else {
            format!("; did you mean {}?", names.join(", "))
        }
    }

    /// Parameters, results, language and producer of an indexed function.
    pub fn function(&mut self, entry: &FunctionEntry) -> Result<Function, DwarfError> {
        self.function_inner(entry)
            .map_err(|source| DwarfError::Gimli {
                path: self.path.clone(),
                source,
            })
    }

    fn function_inner(&mut self, f: &FunctionEntry) -> Result<Function, gimli::Error> {
        let unit = self.unit_at(f.unit)?;
        let language = language_of(&unit);
        let producer = match unit.entries().next_dfs()? {
            Some((_, cu)) => match cu.attr_value(dw::DW_AT_producer)? {
                Some(v) => self
                    .dwarf
                    .attr_string(&unit, v)?
                    .to_string_lossy()?
                    .into_owned(),
                None => String::new(),
            },
            None => String::new(),
        };
        // Parameters come from the abstract origin when there is one: it lists them all, in order.
        // Not from a DW_AT_specification: a declaration (a Rust or C++ method's, inside its type)
        // lists their types without names, and the definition has them all.
        let entry = unit.entry(f.die)?;
        let concrete_unit = unit.clone();
        let origin = match entry.attr_value(dw::DW_AT_abstract_origin)? {
            Some(v) => Self::reference(&unit, v),
            None => None,
        };
        let (unit, die) = match origin {
            Some(origin) => {
                let origin_unit = self.unit_for(origin)?;
                let local =
                    local_offset(&origin_unit, origin).ok_or(gimli::Error::NoEntryAtGivenOffset)?;
                (origin_unit, local)
            }
            None => (unit, f.die),
        };
        let mut params = Vec::new();
        // Global offsets of the declared parameters, to match a clone's parameters to them.
        let mut declared = Vec::new();
        let mut return_type = None;
        {
            let mut tree = unit.entries_tree(Some(die))?;
            let root = tree.root()?;
            if let Some(v) = root.entry().attr_value(dw::DW_AT_type)? {
                return_type = Self::reference(&unit, v);
            } else if let Some(v) = root.entry().attr_value(dw::DW_AT_specification)?
                && let Some(declaration) = Self::reference(&unit, v)
            {
                // A method's result type is on its declaration.
                let decl_unit = self.unit_for(declaration)?;
                if let Some(local) = local_offset(&decl_unit, declaration)
                    && let Some(v) = decl_unit.entry(local)?.attr_value(dw::DW_AT_type)?
                {
                    return_type = Self::reference(&decl_unit, v);
                }
            }
            let mut children = root.children();
            while let Some(child) = children.next()? {
                let e = child.entry();
                if e.tag() != dw::DW_TAG_formal_parameter {
                    continue;
                }
                let name = self.name_of(&unit, e)?.unwrap_or_default();
                let Some(ty) = e
                    .attr_value(dw::DW_AT_type)?
                    .and_then(|v| Self::reference(&unit, v))
                else {
                    continue;
                };
                let is_return = matches!(
                    e.attr_value(dw::DW_AT_variable_parameter)?,
                    Some(AttributeValue::Flag(true))
                );
                // Go lists a named result twice when it escapes to the heap (a deferred closure
                // that sets it after a recover): one value, one result register.
                if language == Language::Go
                    && is_return
                    && params
                        .iter()
                        .any(|p: &Param| p.is_return && p.name == name && !name.is_empty())
                {
                    continue;
                }
                declared.push(e.offset().to_debug_info_offset(&unit.header).map(|o| o.0));
                params.push(Param {
                    name,
                    ty,
                    is_return,
                    passed: Passed::Abi,
                });
            }
        }
        if language != Language::Go
            && origin.is_some()
            && let Some(passed) = self.clone_params(&concrete_unit, f, &declared)?
        {
            for (p, how) in params.iter_mut().zip(passed) {
                p.passed = how;
            }
        }
        if language != Language::Go
            && let Some(ty) = return_type
        {
            params.push(Param {
                name: "~r0".into(),
                ty,
                is_return: true,
                passed: Passed::Abi,
            });
        }
        // Unnamed C parameters get positional names so expressions can still reach them.
        for (i, p) in params.iter_mut().enumerate() {
            if p.name.is_empty() {
                p.name = format!("arg{i}");
            }
        }
        Ok(Function {
            name: f.name.clone(),
            low_pc: f.low_pc,
            high_pc: f.high_pc,
            language,
            producer,
            params,
        })
    }

    /// How a specialised clone receives each declared parameter (`declared`: their global
    /// offsets), read from the concrete instance's own parameter entries; `None` when the code
    /// takes the declared parameters as declared (every one has a location, in order, and none
    /// is a constant).
    fn clone_params(
        &self,
        unit: &gimli::Unit<R>,
        f: &FunctionEntry,
        declared: &[Option<usize>],
    ) -> Result<Option<Vec<Passed>>, gimli::Error> {
        let mut seen: Vec<(usize, Passed, bool)> = Vec::new();
        let mut tree = unit.entries_tree(Some(f.die))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_formal_parameter {
                continue;
            }
            let Some(origin) = e
                .attr_value(dw::DW_AT_abstract_origin)?
                .and_then(|v| Self::reference(unit, v))
            else {
                continue;
            };
            if let Some(v) = e.attr_value(dw::DW_AT_const_value)? {
                let value = match v {
                    AttributeValue::Sdata(n) => Some(n),
                    AttributeValue::Data1(n) => Some(i64::from(n as i8)),
                    AttributeValue::Data2(n) => Some(i64::from(n as i16)),
                    AttributeValue::Data4(n) => Some(i64::from(n as i32)),
                    AttributeValue::Data8(n) => Some(n as i64),
                    AttributeValue::Udata(n) => i64::try_from(n).ok(),
                    _ => None,
                };
                seen.push((origin, value.map_or(Passed::Unknown, Passed::Const), true));
                continue;
            }
            let passed = match e.attr_value(dw::DW_AT_location)? {
                Some(AttributeValue::Exprloc(expr)) => register_of(unit, expr),
                Some(v) => match self.dwarf.attr_locations(unit, v)? {
                    Some(mut list) => {
                        let mut at_entry = Passed::Unknown;
                        while let Some(loc) = list.next()? {
                            if loc.range.begin <= f.low_pc && f.low_pc < loc.range.end {
                                at_entry = register_of(unit, loc.data);
                                break;
                            }
                        }
                        at_entry
                    }
                    None => Passed::Unknown,
                },
                None => Passed::Unknown,
            };
            seen.push((origin, passed, false));
        }
        let arguments: Vec<usize> = declared.iter().flatten().copied().collect();
        let in_order = seen.len() == arguments.len()
            && seen
                .iter()
                .zip(&arguments)
                .all(|((o, _, c), a)| o == a && !c);
        if in_order {
            return Ok(None);
        }
        Ok(Some(
            declared
                .iter()
                .map(|d| {
                    d.and_then(|d| seen.iter().find(|(o, _, _)| *o == d))
                        .map_or(Passed::Unknown, |(_, p, _)| p.clone())
                })
                .collect(),
        ))
    }

    /// The Go struct type named `name` (e.g. `errors.errorString`).
    pub fn go_struct(&self, name: &str) -> Option<TypeId> {
        self.go_structs.get(name).copied()
    }

    /// `(offset of goid, offset of stack.hi)` in Go's `runtime.g`.
    pub fn go_g_offsets(&mut self) -> Option<(u64, u64)> {
        let g = self.runtime_g?;
        let Ok(Type::Struct { fields, .. }) = self.ty(g) else {
            return None;
        };
        let goid = fields.iter().find(|f| f.name == "goid")?.offset;
        let stack = fields.iter().find(|f| f.name == "stack")?;
        let Ok(Type::Struct { fields: sf, .. }) = self.ty(stack.ty) else {
            return None;
        };
        let hi = sf.iter().find(|f| f.name == "hi")?.offset;
        Some((goid, stack.offset + hi))
    }

    /// The type at `id` (memoised).
    pub fn ty(&mut self, id: TypeId) -> Result<Type, DwarfError> {
        self.ty_depth(id, 0).map_err(|source| DwarfError::Gimli {
            path: self.path.clone(),
            source,
        })
    }

    pub(super) fn ty_depth(&mut self, id: TypeId, depth: u32) -> Result<Type, gimli::Error> {
        if let Some(t) = self.types.get(&id) {
            return Ok(t.clone());
        }
        if depth > 16 {
            return Ok(Type::Unsupported {
                name: String::new(),
                why: "type chain too deep".into(),
            });
        }
        let t = self.load_type(id, depth)?;
        self.types.insert(id, t.clone());
        Ok(t)
    }

    fn load_type(&mut self, id: TypeId, depth: u32) -> Result<Type, gimli::Error> {
        let unit = self.unit_for(id)?;
        let local = local_offset(&unit, id).ok_or(gimli::Error::NoEntryAtGivenOffset)?;
        let entry = unit.entry(local)?;
        let name = self.name_of(&unit, &entry)?.unwrap_or_default();
        let target = entry
            .attr_value(dw::DW_AT_type)?
            .and_then(|v| Self::reference(&unit, v));
        let byte_size = entry
            .attr_value(dw::DW_AT_byte_size)?
            .and_then(|v| v.udata_value());
        let go_kind = entry
            .attr_value(DW_AT_GO_KIND)?
            .and_then(|v| v.udata_value());
        let tag: DwTag = entry.tag();
        let t = match tag {
            dw::DW_TAG_base_type => {
                let size = byte_size.unwrap_or(0) as u8;
                match entry.attr_value(dw::DW_AT_encoding)? {
                    Some(AttributeValue::Encoding(dw::DW_ATE_boolean)) => Type::Bool { name },
                    Some(AttributeValue::Encoding(dw::DW_ATE_float)) => Type::Float { name, size },
                    Some(AttributeValue::Encoding(dw::DW_ATE_signed | dw::DW_ATE_signed_char)) => {
                        Type::Int {
                            name,
                            size,
                            signed: true,
                        }
                    }
                    Some(AttributeValue::Encoding(
                        dw::DW_ATE_unsigned | dw::DW_ATE_unsigned_char | dw::DW_ATE_UTF,
                    )) => Type::Int {
                        name,
                        size,
                        signed: false,
                    },
                    _ => Type::Unsupported {
                        why: format!("base type {name} (complex or decimal numbers)"),
                        name,
                    },
                }
            }
            dw::DW_TAG_pointer_type
            | dw::DW_TAG_reference_type
            | dw::DW_TAG_rvalue_reference_type => Type::Pointer {
                name,
                to: target,
                opaque: matches!(go_kind, Some(GO_KIND_MAP | GO_KIND_CHAN | GO_KIND_FUNC)),
            },
            dw::DW_TAG_typedef if go_kind == Some(GO_KIND_INTERFACE) => {
                let empty = match target {
                    Some(t) => self.name_at(t)?.as_deref() == Some("runtime.eface"),
                    None => false,
                };
                Type::GoInterface { name, empty }
            }
            dw::DW_TAG_typedef
            | dw::DW_TAG_const_type
            | dw::DW_TAG_volatile_type
            | dw::DW_TAG_restrict_type
            | dw::DW_TAG_atomic_type => match target {
                Some(t) => {
                    let mut inner = self.ty_depth(t, depth + 1)?;
                    if let Type::Struct { name: n, .. } = &mut inner
                        && n.is_empty()
                    {
                        *n = name;
                    }
                    inner
                }
                None => Type::Unsupported {
                    why: "void".into(),
                    name: if name.is_empty() { "void".into() } else { name },
                },
            },
            dw::DW_TAG_enumeration_type => {
                let signed = match target {
                    Some(t) => {
                        matches!(self.ty_depth(t, depth + 1)?, Type::Int { signed: true, .. })
                    }
                    None => false,
                };
                let size = byte_size.unwrap_or(4) as u8;
                if language_of(&unit) == Language::Rust {
                    self.rust_c_like(&unit, local, name, size, signed)?
                } else {
                    Type::Int { name, size, signed }
                }
            }
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type | dw::DW_TAG_union_type => {
                let fields = self.fields(&unit, local)?;
                if go_kind == Some(GO_KIND_STRING) {
                    Type::GoString
                } else if go_kind == Some(GO_KIND_SLICE) {
                    let elem = entry
                        .attr_value(DW_AT_GO_ELEM)?
                        .and_then(|v| Self::reference(&unit, v));
                    match elem {
                        Some(elem) => Type::GoSlice { name, elem },
                        None => Type::Unsupported {
                            why: "slice without element type".into(),
                            name,
                        },
                    }
                } else if name.starts_with('&')
                    && fields.iter().any(|f| f.name == "data_ptr")
                    && fields.iter().any(|f| f.name == "length")
                {
                    let is_str = name.ends_with("str");
                    let elem = match fields.iter().find(|f| f.name == "data_ptr") {
                        Some(f) => match self.ty_depth(f.ty, depth + 1)? {
                            Type::Pointer { to, .. } => to,
                            _ => None,
                        },
                        None => None,
                    };
                    Type::RustSlice { name, elem, is_str }
                } else if let Some(vec) = match self.rust_vecs.contains(&id) {
                    true => self.rust_vec(&unit, local, &name, &fields, byte_size, depth)?,
                    false => None,
                } {
                    vec
                } else if matches!(
                    entry.attr_value(dw::DW_AT_declaration)?,
                    Some(AttributeValue::Flag(true))
                ) {
                    Type::Unsupported {
                        why: format!("{name} is only declared here (incomplete type)"),
                        name,
                    }
                } else if let Some(e) =
                    self.rust_enum(&unit, local, &name, byte_size.unwrap_or(0), depth)?
                {
                    e
                } else {
                    Type::Struct {
                        name,
                        size: byte_size.unwrap_or(0),
                        fields,
                    }
                }
            }
            dw::DW_TAG_array_type => {
                let Some(elem) = target else {
                    return Ok(Type::Unsupported {
                        why: "array without element type".into(),
                        name,
                    });
                };
                let count = array_count(&unit, local)?;
                let elem_size = self.ty_depth(elem, depth + 1)?.size();
                Type::Array {
                    name,
                    elem,
                    count,
                    size: byte_size.unwrap_or(count * elem_size),
                }
            }
            other => Type::Unsupported {
                why: format!("{} types", other.static_string().unwrap_or("unknown")),
                name,
            },
        };
        Ok(t)
    }

    /// Rust's `String` or `Vec<T>` (`fields`: its members) as a [`Type::RustVec`]; None when its
    /// layout is not one this recognises (it is then shown as the struct it is). A `String` is
    /// its `vec`; a `Vec`'s length is `len` and its data pointer is found in `buf` through members
    /// named `inner`, `ptr` and `pointer` (`RawVec { inner: RawVecInner { ptr: Unique { pointer:
    /// NonNull { pointer } } } }` today, `RawVec { ptr: Unique { pointer } }` in older releases).
    fn rust_vec(
        &mut self,
        unit: &gimli::Unit<R>,
        at: UnitOffset,
        name: &str,
        fields: &[Field],
        size: Option<u64>,
        depth: u32,
    ) -> Result<Option<Type>, gimli::Error> {
        let Some(size) = size else {
            return Ok(None);
        };
        if let Some(vec) = fields.iter().find(|f| f.name == "vec") {
            return Ok(match self.ty_depth(vec.ty, depth + 1)? {
                Type::RustVec { ptr, len, .. } => Some(Type::RustVec {
                    name: name.to_owned(),
                    size,
                    ptr: vec.offset + ptr,
                    len: vec.offset + len,
                    elem: None,
                }),
                _ => None,
            });
        }
        let (Some(buf), Some(len)) = (
            fields.iter().find(|f| f.name == "buf"),
            fields.iter().find(|f| f.name == "len"),
        ) else {
            return Ok(None);
        };
        let Some(ptr) = self.data_pointer(buf.ty, depth + 1)? else {
            return Ok(None);
        };
        let Some(elem) = self.template_type(unit, at, "T")? else {
            return Ok(None);
        };
        Ok(Some(Type::RustVec {
            name: name.to_owned(),
            size,
            ptr: buf.offset + ptr,
            len: len.offset,
            elem: Some(elem),
        }))
    }

    /// Offset of the data pointer inside a `Vec`'s buffer type, walking members by name.
    fn data_pointer(&mut self, ty: TypeId, depth: u32) -> Result<Option<u64>, gimli::Error> {
        if depth > 12 {
            return Ok(None);
        }
        match self.ty_depth(ty, depth)? {
            Type::Pointer { .. } => Ok(Some(0)),
            Type::Struct { fields, .. } => {
                for want in ["inner", "ptr", "pointer"] {
                    if let Some(f) = fields.iter().find(|f| f.name == want) {
                        return Ok(self.data_pointer(f.ty, depth + 1)?.map(|o| f.offset + o));
                    }
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The type of the template type parameter `name` of the type at `at` (`T` of `Vec<T, A>`).
    fn template_type(
        &self,
        unit: &gimli::Unit<R>,
        at: UnitOffset,
        name: &str,
    ) -> Result<Option<TypeId>, gimli::Error> {
        let mut tree = unit.entries_tree(Some(at))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_template_type_parameter {
                continue;
            }
            if self.name_of(unit, e)?.as_deref() == Some(name) {
                return Ok(e
                    .attr_value(dw::DW_AT_type)?
                    .and_then(|v| Self::reference(unit, v)));
            }
        }
        Ok(None)
    }

    pub(super) fn fields(
        &self,
        unit: &gimli::Unit<R>,
        at: UnitOffset,
    ) -> Result<Vec<Field>, gimli::Error> {
        let mut tree = unit.entries_tree(Some(at))?;
        let root = tree.root()?;
        let mut children = root.children();
        let mut fields = Vec::new();
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != dw::DW_TAG_member {
                continue;
            }
            // Bit fields are skipped: a slot reads whole bytes.
            if e.attr_value(dw::DW_AT_bit_size)?.is_some() {
                continue;
            }
            let Some(ty) = e
                .attr_value(dw::DW_AT_type)?
                .and_then(|v| Self::reference(unit, v))
            else {
                continue;
            };
            let offset = e
                .attr_value(dw::DW_AT_data_member_location)?
                .and_then(|v| v.udata_value())
                .unwrap_or(0);
            let name = self.name_of(unit, e)?.unwrap_or_default();
            fields.push(Field { name, offset, ty });
        }
        Ok(fields)
    }
}

pub(super) fn local_offset(unit: &gimli::Unit<R>, global: usize) -> Option<UnitOffset> {
    let start = unit.header.offset().as_debug_info_offset()?.0;
    let local = UnitOffset(global.checked_sub(start)?);
    // The offset must be inside this unit's entries.
    (local.0 < unit.header.length_including_self()).then_some(local)
}

/// The register a location expression names when it is just that (`DW_OP_regN`), as a
/// `pt_regs` word.
fn register_of(unit: &gimli::Unit<R>, expr: gimli::Expression<R>) -> Passed {
    let mut ops = expr.operations(unit.encoding());
    match (ops.next(), ops.next()) {
        (Ok(Some(gimli::Operation::Register { register })), Ok(None)) => {
            dwarf_register(register.0).map_or(Passed::Unknown, Passed::Reg)
        }
        _ => Passed::Unknown,
    }
}

/// x86-64 DWARF register numbers 0–15 as `pt_regs` words.
fn dwarf_register(n: u16) -> Option<u8> {
    use sonde_common::dynlog::reg;
    Some(match n {
        0 => reg::RAX,
        1 => reg::RDX,
        2 => reg::RCX,
        3 => reg::RBX,
        4 => reg::RSI,
        5 => reg::RDI,
        6 => reg::RBP,
        7 => reg::RSP,
        8 => reg::R8,
        9 => reg::R9,
        10 => reg::R10,
        11 => reg::R11,
        12 => reg::R12,
        13 => reg::R13,
        14 => reg::R14,
        15 => reg::R15,
        _ => return None,
    })
}

fn language_of(unit: &gimli::Unit<R>) -> Language {
    match unit.entries().next_dfs() {
        Ok(Some((_, cu))) => match cu.attr_value(dw::DW_AT_language) {
            Ok(Some(AttributeValue::Language(lang))) => match lang {
                dw::DW_LANG_Go => Language::Go,
                dw::DW_LANG_Rust => Language::Rust,
                dw::DW_LANG_C
                | dw::DW_LANG_C89
                | dw::DW_LANG_C99
                | dw::DW_LANG_C11
                | dw::DW_LANG_C17 => Language::C,
                dw::DW_LANG_C_plus_plus
                | dw::DW_LANG_C_plus_plus_03
                | dw::DW_LANG_C_plus_plus_11
                | dw::DW_LANG_C_plus_plus_14
                | dw::DW_LANG_C_plus_plus_17
                | dw::DW_LANG_C_plus_plus_20 => Language::Cpp,
                _ => Language::Other,
            },
            _ => Language::Other,
        },
        _ => Language::Other,
    }
}

fn array_count(unit: &gimli::Unit<R>, at: UnitOffset) -> Result<u64, gimli::Error> {
    let mut tree = unit.entries_tree(Some(at))?;
    let root = tree.root()?;
    let mut children = root.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        if e.tag() != dw::DW_TAG_subrange_type {
            continue;
        }
        if let Some(n) = e.attr_value(dw::DW_AT_count)?.and_then(|v| v.udata_value()) {
            return Ok(n);
        }
        if let Some(n) = e
            .attr_value(dw::DW_AT_upper_bound)?
            .and_then(|v| v.udata_value())
        {
            return Ok(n + 1);
        }
    }
    Ok(0)
}

/// Up to [`SUGGESTIONS`] of `names` close to `query`: same last segment up to a few typos, or
/// containing it. Names whose last components are the query's (`main.(*Server).Handle` for
/// `Server.Handle`) come first, the more components the earlier; then the closest, then the
/// shortest.
fn suggestions<'a>(names: impl Iterator<Item = &'a str>, query: &str) -> Vec<&'a str> {
    let last = last_segment(query).to_ascii_lowercase();
    let wanted = components(query);
    let limit = (last.chars().count() / 3).max(2);
    let mut scored: Vec<(std::cmp::Reverse<usize>, usize, &str)> = names
        .filter_map(|name| {
            let seg = last_segment(name).to_ascii_lowercase();
            let d = if seg.contains(&last) {
                0
            } else {
                edit_distance(&seg, &last)
            };
            if d > limit {
                return None;
            }
            let same = components(name)
                .iter()
                .rev()
                .zip(wanted.iter().rev())
                .take_while(|(a, b)| a == b)
                .count();
            Some((std::cmp::Reverse(same), d, name))
        })
        .collect();
    scored.sort_by_key(|(same, d, n)| (*same, *d, n.len(), *n));
    let mut names: Vec<&str> = scored.into_iter().map(|(_, _, n)| n).collect();
    names.dedup();
    names.truncate(SUGGESTIONS);
    names
}

/// The name's identifiers: `main.(*Server).Handle` → `main`, `Server`, `Handle`.
fn components(name: &str) -> Vec<&str> {
    name.split(['.', ':', '/', ')', '*', '(', ' '])
        .filter(|s| !s.is_empty())
        .collect()
}

/// A mangled symbol: Itanium C++ or Rust legacy (`_Z`), Rust v0 (`_R`).
fn is_mangled(name: &str) -> bool {
    (name.starts_with("_Z") || name.starts_with("_R"))
        && name.len() > 3
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_$.".contains(&b))
}

/// A Rust legacy symbol without its hash: `_ZN4prog5greet17h0123456789abcdefE` →
/// `_ZN4prog5greet`; None for other symbols.
fn without_rust_hash(symbol: &str) -> Option<&str> {
    let body = symbol.strip_prefix("_ZN")?.strip_suffix('E')?;
    let (path, hash) = body.split_at_checked(body.len().checked_sub(19)?)?;
    let digits = hash.strip_prefix("17h")?;
    digits
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some(&symbol[..3 + path.len()])
}

/// `, in main, serve` (nothing when no caller is known).
pub fn in_callers(callers: &[String]) -> String {
    if callers.is_empty() {
        String::new()
    } else {
        format!(", in {}", callers.join(", "))
    }
}

/// `1 call site`, `3 call sites`.
pub fn plural(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn last_segment(name: &str) -> &str {
    name.rsplit(['.', ':', '/', ')', '*', '('])
        .find(|s| !s.is_empty())
        .unwrap_or(name)
}

/// Levenshtein distance (hand-written: a dozen lines, used only for "did you mean").
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `query` ends `name` at a word boundary (`PlaceOrder` in `main.(*Server).PlaceOrder`).
fn is_word_suffix(name: &str, query: &str) -> bool {
    if query.is_empty() || name.len() <= query.len() || !name.ends_with(query) {
        return false;
    }
    let before = name.as_bytes()[name.len() - query.len() - 1];
    let first = query.as_bytes()[0];
    matches!(before, b'.' | b'/' | b':' | b'(' | b')' | b'*' | b' ')
        || matches!(first, b'.' | b':' | b'(' | b')')
}

#[cfg(test)]
mod tests {
    use super::is_word_suffix;

    #[test]
    fn typos_are_a_small_edit_distance_away() {
        assert_eq!(super::edit_distance("placeordr", "placeorder"), 1);
        assert_eq!(super::edit_distance("", "abc"), 3);
        assert_eq!(
            super::last_segment("main.(*Server).PlaceOrder"),
            "PlaceOrder"
        );
    }

    #[test]
    fn suggestions_whose_last_components_match_come_first() {
        let names = [
            "runtime.sighandler",
            "runtime.badsignalhandler",
            "main.handler",
            "net/http.(*ServeMux).Handle",
            "main.(*Server).Handle",
            "main.(*Server).Handler",
        ];
        assert_eq!(
            super::suggestions(names.into_iter(), "Server.Handle"),
            [
                "main.(*Server).Handle",
                "net/http.(*ServeMux).Handle",
                "main.handler",
                "runtime.sighandler",
                "main.(*Server).Handler",
            ]
        );
        // The query's whole path beats its last component alone.
        assert_eq!(
            super::suggestions(
                ["a.(*Client).Get", "b.(*Cache).Get"].into_iter(),
                "Cache.Get"
            )[0],
            "b.(*Cache).Get"
        );
    }

    #[test]
    fn rust_legacy_symbols_lose_only_their_hash() {
        assert_eq!(
            super::without_rust_hash("_ZN8rustprog5Point6scaled17h0123456789abcdefE"),
            Some("_ZN8rustprog5Point6scaled")
        );
        assert_eq!(super::without_rust_hash("_ZN8rustprog5greetE"), None);
        assert_eq!(super::without_rust_hash("_RNvCs1234_8rustprog5greet"), None);
        assert!(super::is_mangled("_RNvCs1234_8rustprog5greet"));
        assert!(!super::is_mangled("main.(*Server).Handle"));
    }

    #[test]
    fn suffixes_match_only_at_word_boundaries() {
        assert!(is_word_suffix("main.(*Server).PlaceOrder", "PlaceOrder"));
        assert!(is_word_suffix(
            "main.(*Server).PlaceOrder",
            "(*Server).PlaceOrder"
        ));
        assert!(is_word_suffix("prog::greet", "greet"));
        assert!(!is_word_suffix("main.MyPlaceOrder", "PlaceOrder"));
        assert!(!is_word_suffix("main.Fib", "main.Fib"));
    }
}
