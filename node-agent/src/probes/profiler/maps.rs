//! Snapshots of a process's executable mappings (`/proc/<pid>/maps`), kept after the process exits
//! so its samples of the last period can still be symbolized.
//!
//! Hand-written: one line format with six fields; a procfs crate would bring far more than this.
use std::path::PathBuf;

/// One executable, file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of the byte mapped at `start`.
    pub file_offset: u64,
    /// Path as the process sees it (inside its own mount namespace), ` (deleted)` removed.
    pub path: PathBuf,
}

impl Mapping {
    /// The mapping's file name, used for unresolved frames (`libc.so.6+0x1234`).
    pub fn module(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// `/proc/<pid>/map_files/<start>-<end>`: the mapped file itself, even if deleted or in another
    /// mount namespace.
    pub fn map_file(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// The executable mappings of one process, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    pub mappings: Vec<Mapping>,
}

impl ProcessMaps {
    /// Parses the contents of `/proc/<pid>/maps`, keeping executable mappings of real files
    /// (`[vdso]`, anonymous JIT pages and the like are left out: they have no file to symbolize).
    pub fn parse(contents: &str) -> ProcessMaps {
        let mut mappings: Vec<Mapping> = contents.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        ProcessMaps { mappings }
    }

    /// Reads `/proc/<pid>/maps`; None once the process is gone.
    pub fn read(pid: u32) -> Option<ProcessMaps> {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .ok()
            .map(|c| ProcessMaps::parse(&c))
    }

    /// The mapping that contains `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

/// `start-end perms offset dev inode path`.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    if !perms.contains('x') || inode == "0" || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fe:01 1311 /tmp/hot
55d0c8a01000-55d0c8a02000 r-xp 00001000 fe:01 1311 /tmp/hot
7f3a1c428000-7f3a1c5a0000 r-xp 00028000 fe:01 2222 /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a1c600000-7f3a1c601000 r-xp 00000000 00:00 0 
7ffd5c9f0000-7ffd5c9f2000 r-xp 00000000 00:00 0                          [vdso]
7f3a1c700000-7f3a1c710000 r-xp 00002000 fe:01 3333 /opt/app/lib with space.so (deleted)
";

    #[test]
    fn only_executable_file_mappings_are_kept() {
        let maps = ProcessMaps::parse(MAPS);
        let paths: Vec<_> = maps.mappings.iter().map(|m| m.path.clone()).collect();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("/tmp/hot"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/opt/app/lib with space.so"),
            ]
        );
        assert_eq!(maps.mappings[1].file_offset, 0x28000);
    }

    #[test]
    fn addresses_find_their_mapping_and_gaps_find_none() {
        let maps = ProcessMaps::parse(MAPS);
        assert_eq!(maps.find(0x55d0c8a01234).unwrap().module(), "hot");
        assert_eq!(maps.find(0x7f3a1c428000).unwrap().module(), "libc.so.6");
        assert!(maps.find(0x7f3a1c5a0000).is_none());
        assert!(maps.find(0x1000).is_none());
        assert_eq!(
            maps.mappings[0].map_file(42),
            PathBuf::from("/proc/42/map_files/55d0c8a01000-55d0c8a02000")
        );
    }
}
