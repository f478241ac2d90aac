//! A target's executable file: its bytes, where its debug information is, and the mapping from
//! virtual addresses to the file offsets uprobes are attached at.
//!
//! The debug information is the binary's own `.debug_*` sections, or a separate file found by
//! build id (`/usr/lib/debug/.build-id/xx/yyyy.debug`) or `.gnu_debuglink`, looked up inside the
//! target's root first and then on the host.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot read {path}: {source}; is the process still running?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file the agent can read: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("{path} is a {arch:?} binary; DynamicLog supports x86-64 only")]
    Arch {
        path: PathBuf,
        arch: object::Architecture,
    },
    #[error(
        "{path} has no debug information (no .debug_info, no separate debug file by build id or debuglink); \
         rebuild it without stripping (Go: drop -ldflags=-w/-s; C/Rust: -g) or install its debug package"
    )]
    NoDebugInfo { path: PathBuf },
    #[error(
        "address {address:#x} of {what} is not inside any section of {path}; the debug information does not match the binary"
    )]
    Address {
        path: PathBuf,
        what: String,
        address: u64,
    },
}

/// A loaded executable and, where needed, its separate debug file.
pub struct Binary {
    pub path: PathBuf,
    data: Vec<u8>,
    /// The separate debug file, when the binary's own DWARF is missing.
    debug: Option<(PathBuf, Vec<u8>)>,
}

/// An executable section, for mapping addresses and reading code.
struct Section {
    address: u64,
    size: u64,
    file_offset: u64,
}

impl Binary {
    /// Reads `path` (usually `/proc/<pid>/root/<exe>`); `root` is the target's root for finding a
    /// separate debug file.
    pub fn read(path: &Path, root: &Path) -> Result<Binary, BinaryError> {
        Binary::read_as(path, path, root)
    }

    /// Reads `file` (e.g. a process's running executable, see [`super::running`]) as the binary
    /// at `path`: messages name `path`, and a `.gnu_debuglink` file is looked up beside it.
    pub fn read_as(file: &Path, path: &Path, root: &Path) -> Result<Binary, BinaryError> {
        let data = std::fs::read(file).map_err(|source| BinaryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut binary = Binary {
            path: path.to_owned(),
            data,
            debug: None,
        };
        let file = binary.object()?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(BinaryError::Arch {
                path: path.to_owned(),
                arch: file.architecture(),
            });
        }
        let has_dwarf = file
            .section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0);
        if !has_dwarf {
            let candidates = debug_file_candidates(&file, path, root);
            drop(file);
            binary.debug = candidates.into_iter().find_map(|candidate| {
                let bytes = std::fs::read(&candidate).ok()?;
                let has = object::File::parse(&*bytes)
                    .ok()?
                    .section_by_name(".debug_info")
                    .is_some_and(|s| s.size() > 0);
                has.then_some((candidate, bytes))
            });
            if binary.debug.is_none() {
                return Err(BinaryError::NoDebugInfo {
                    path: path.to_owned(),
                });
            }
        }
        Ok(binary)
    }

    /// The executable itself.
    pub fn object(&self) -> Result<object::File<'_>, BinaryError> {
        object::File::parse(&*self.data).map_err(|source| BinaryError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// The file that holds the DWARF (the executable or its separate debug file).
    pub fn dwarf_object(&self) -> Result<object::File<'_>, BinaryError> {
        match &self.debug {
            None => self.object(),
            Some((path, bytes)) => {
                object::File::parse(&**bytes).map_err(|source| BinaryError::Parse {
                    path: path.clone(),
                    source,
                })
            }
        }
    }

    /// Where the DWARF came from, for messages.
    pub fn dwarf_path(&self) -> &Path {
        self.debug.as_ref().map_or(&self.path, |(p, _)| p)
    }

    fn code_section(&self, address: u64, what: &str) -> Result<Section, BinaryError> {
        let file = self.object()?;
        file.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .find(|s| address >= s.address() && address < s.address() + s.size())
            .and_then(|s| {
                let (file_offset, _) = s.file_range()?;
                Some(Section {
                    address: s.address(),
                    size: s.size(),
                    file_offset,
                })
            })
            .ok_or_else(|| BinaryError::Address {
                path: self.path.clone(),
                what: what.to_owned(),
                address,
            })
    }

    /// The file offset a uprobe at virtual `address` is attached at.
    pub fn file_offset(&self, address: u64, what: &str) -> Result<u64, BinaryError> {
        let section = self.code_section(address, what)?;
        Ok(address - section.address + section.file_offset)
    }

    /// The machine code of `[address, address + size)`.
    pub fn code(&self, address: u64, size: u64, what: &str) -> Result<&[u8], BinaryError> {
        let section = self.code_section(address, what)?;
        let end = (address + size).min(section.address + section.size);
        let start = (address - section.address + section.file_offset) as usize;
        let len = (end - address) as usize;
        self.data
            .get(start..start + len)
            .ok_or_else(|| BinaryError::Address {
                path: self.path.clone(),
                what: what.to_owned(),
                address,
            })
    }

    /// Symbols whose name starts with one of `prefixes`, by address (Go itabs and type descriptors).
    pub fn symbols_with_prefix(&self, prefixes: &[&str]) -> BTreeMap<u64, String> {
        let Ok(file) = self.object() else {
            return BTreeMap::new();
        };
        file.symbols()
            .filter_map(|s| {
                let name = s.name().ok()?;
                prefixes
                    .iter()
                    .any(|p| name.starts_with(p))
                    .then(|| (s.address(), name.to_owned()))
            })
            .collect()
    }
}

/// Separate debug files to try, best first.
fn debug_file_candidates(file: &object::File<'_>, path: &Path, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let bases = [root.join("usr/lib/debug"), PathBuf::from("/usr/lib/debug")];
    if let Ok(Some(id)) = file.build_id()
        && id.len() > 1
    {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        for base in &bases {
            out.push(
                base.join(".build-id")
                    .join(&hex[..2])
                    .join(format!("{}.debug", &hex[2..])),
            );
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink()
        && let Ok(name) = std::str::from_utf8(name)
    {
        if let Some(dir) = path.parent() {
            out.push(dir.join(name));
            out.push(dir.join(".debug").join(name));
        }
        for base in &bases {
            out.push(base.join(name));
        }
    }
    out
}
