//! Offsets of kernel struct members, from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! eBPF programs written in Rust get no CO-RE relocations, so a program that follows kernel
//! pointers (task → fd table → socket) is handed the offsets the agent read here, for the kernel
//! it runs on. Written by hand because it needs so little (struct and union members by name): the
//! BTF parser aya already carries keeps struct members crate-private, and btf-rs is LGPL, which
//! this Apache-2.0 project does not take on. Format: the kernel's Documentation/bpf/btf.rst.
use std::path::{Path, PathBuf};

/// Where the kernel exposes its own BTF (`CONFIG_DEBUG_INFO_BTF`).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// `btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read the kernel's BTF at {}: {source}; a kernel built with CONFIG_DEBUG_INFO_BTF=y has it (most distribution kernels since 5.4)",
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel's BTF is malformed ({what}); report this kernel's version to Sonde")]
    Malformed { what: &'static str },
    #[error(
        "the kernel's BTF has no struct {name}; this kernel is unlike any Sonde knows: report its version"
    )]
    NoStruct { name: String },
    #[error(
        "struct {name} has no member {member} in the kernel's BTF (or it is a bitfield); this kernel is unlike any Sonde knows: report its version"
    )]
    NoMember { name: String, member: String },
}

/// One type's header.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    /// Where its kind-specific data starts, in `KernelBtf::types`.
    extra: usize,
}

impl Type {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// The types and strings of one BTF blob.
pub struct KernelBtf {
    types_section: Vec<u8>,
    strings: Vec<u8>,
    /// By type id − 1 (id 0 is void).
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

impl KernelBtf {
    /// The running kernel's BTF.
    pub fn load() -> Result<KernelBtf, BtfError> {
        KernelBtf::read(Path::new(VMLINUX_BTF))
    }

    pub fn read(path: &Path) -> Result<KernelBtf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        KernelBtf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<KernelBtf, BtfError> {
        let malformed = |what| BtfError::Malformed { what };
        let magic = data
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(malformed("shorter than its header"))?;
        if magic != MAGIC {
            return Err(malformed("no BTF magic (or another byte order)"));
        }
        let field = |at| u32_at(data, at).ok_or(malformed("shorter than its header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(malformed("header too short"));
        }
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let types_section = section(type_off, type_len)
            .ok_or(malformed("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or(malformed("string section out of bounds"))?
            .to_vec();
        let mut types = Vec::new();
        let mut at = 0;
        while at < types_section.len() {
            let word =
                |i: usize| u32_at(&types_section, at + 4 * i).ok_or(malformed("truncated type"));
            // The third word (size or referenced type) is not needed; a type cut short anywhere
            // ends past the section, which the check after the loop refuses.
            let ty = Type {
                name_off: word(0)?,
                info: word(1)?,
                extra: at + TYPE_LEN,
            };
            let extra_len = match ty.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * ty.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * ty.vlen(),
                _ => 0,
            };
            types.push(ty);
            at = ty.extra + extra_len;
        }
        if at != types_section.len() {
            return Err(malformed("truncated type"));
        }
        Ok(KernelBtf {
            types_section,
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn by_id(&self, id: u32) -> Option<Type> {
        self.types.get((id as usize).checked_sub(1)?).copied()
    }

    /// Byte offset of `member` in `struct name`, looking into its anonymous structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let strukt = self
            .types
            .iter()
            .find(|t| t.kind() == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .ok_or_else(|| BtfError::NoStruct { name: name.into() })?;
        self.find_member(*strukt, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::NoMember {
                name: name.into(),
                member: member.into(),
            })
    }

    /// Bit offsets are summed down through anonymous members; `depth` bounds a malformed cycle.
    fn find_member(&self, ty: Type, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for i in 0..ty.vlen() {
            let at = ty.extra + 12 * i;
            let name_off = u32_at(&self.types_section, at)?;
            let member_type = u32_at(&self.types_section, at + 4)?;
            let raw_offset = u32_at(&self.types_section, at + 8)?;
            // With kind_flag, the top 8 bits are a bitfield's size: a bitfield has no byte offset.
            let (bits, bitfield) = if ty.kind_flag() {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24 != 0)
            } else {
                (raw_offset, false)
            };
            if name_off == 0 {
                let inner = self.by_id(member_type)?;
                if matches!(inner.kind(), KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, depth + 1)
                {
                    return (bits % 8 == 0).then(|| bits / 8 + found);
                }
            } else if self.name(name_off) == member {
                return (!bitfield && bits % 8 == 0).then_some(bits / 8);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct outer { int a; union { int b; struct { short c; short d; }; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0short\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap_or(0)
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int (4 bytes, 32 bits).
        types.extend([name("int"), KIND_INT << 24, 4, 32]);
        // 2: short.
        types.extend([name("short"), KIND_INT << 24, 2, 16]);
        // 3: struct { short c; short d; } (anonymous).
        types.extend([0, KIND_STRUCT << 24 | 2, 4]);
        types.extend([name("c"), 2, 0, name("d"), 2, 16]);
        // 4: union { int b; struct 3; } (anonymous).
        types.extend([0, KIND_UNION << 24 | 2, 4]);
        types.extend([name("b"), 1, 0, 0, 3, 0]);
        // 5: struct outer { int a; union 4; }.
        types.extend([name("outer"), KIND_STRUCT << 24 | 2, 8]);
        types.extend([name("a"), 1, 0, 0, 4, 32]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut data = Vec::new();
        data.extend(MAGIC.to_le_bytes());
        data.extend([1u8, 0]);
        for word in [
            HEADER_LEN as u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            data.extend(word.to_le_bytes());
        }
        data.extend(type_bytes);
        data.extend(strings);
        data
    }

    #[test]
    fn members_are_found_through_anonymous_unions_and_structs() {
        let btf = KernelBtf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 6);
    }

    #[test]
    fn a_missing_struct_or_member_is_named_in_the_error() {
        let btf = KernelBtf::parse(&blob()).unwrap();
        let err = btf.member_offset("outer", "e").unwrap_err().to_string();
        assert!(err.contains("struct outer has no member e"), "{err}");
        let err = btf.member_offset("inner", "a").unwrap_err().to_string();
        assert!(err.contains("no struct inner"), "{err}");
    }

    #[test]
    fn a_truncated_blob_is_an_error_not_a_panic() {
        let data = blob();
        for len in 0..data.len() {
            assert!(
                KernelBtf::parse(&data[..len]).is_err(),
                "{len} bytes parsed"
            );
        }
    }

    #[test]
    fn the_running_kernel_s_socket_members_are_where_its_layout_puts_them() {
        let btf = KernelBtf::load().unwrap();
        // struct sock_common's address pair and port pair open it on every 64-bit kernel since
        // 3.x: daddr, rcv_saddr, hash, dport, num.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr").unwrap(),
            4
        );
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.member_offset("sock", "__sk_common").unwrap(), 0);
        assert!(btf.member_offset("task_struct", "files").unwrap() > 0);
    }
}
