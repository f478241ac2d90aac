//! `stack_traces` rows → a gzip'd pprof profile (the `profile.proto` that `go tool pprof`, Pyroscope,
//! Parca and Grafana read).
//!
//! The messages below are `profile.proto` (github.com/google/pprof/proto/profile.proto) written as
//! prost derives: no crate ships them without a heavy sampling runtime attached, and a build-time
//! protoc step would be a new build dependency for eight small messages.
use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use crate::frames::KERNEL_PREFIX;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// One `stack_traces` row, as the profile builder needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackRow {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pid: i64,
    /// Folded, root first, `;`-separated.
    pub stack: String,
    pub count: i64,
}

/// A frame split into function, file and line: `main (hot.c:12)` → (`main`, `hot.c`, 12).
pub fn parse_frame(frame: &str) -> (&str, &str, i64) {
    let Some(open) = frame.rfind(" (") else {
        return (frame, "", 0);
    };
    let Some(inner) = frame[open + 2..].strip_suffix(')') else {
        return (frame, "", 0);
    };
    let name = &frame[..open];
    match inner.rsplit_once(':') {
        Some((file, line)) => match line.parse() {
            Ok(line) => (name, file, line),
            Err(_) => (name, inner, 0),
        },
        None => (name, inner, 0),
    }
}

#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, String), u64>,
    locations: HashMap<String, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn location(&mut self, frame: &str) -> u64 {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let (name, file, line) = parse_frame(frame);
        let key = (name.to_owned(), file.to_owned());
        let function_id = match self.functions.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.profile.function.len() as u64 + 1;
                let name_idx = self.string(name);
                let file_idx = self.string(file);
                self.profile.function.push(Function {
                    id,
                    name: name_idx,
                    system_name: name_idx,
                    filename: file_idx,
                });
                self.functions.insert(key, id);
                id
            }
        };
        let id = self.profile.location.len() as u64 + 1;
        // Locations carry no address: every frame is already symbolized (one synthetic mapping
        // says so, so pprof does not try to symbolize them again).
        self.profile.location.push(Location {
            id,
            mapping_id: 1,
            address: 0,
            line: vec![Line { function_id, line }],
        });
        self.locations.insert(frame.to_owned(), id);
        id
    }

    fn label(&mut self, key: &str, value: &str) -> Option<Label> {
        if value.is_empty() {
            return None;
        }
        Some(Label {
            key: self.string(key),
            str: self.string(value),
            num: 0,
            num_unit: 0,
        })
    }
}

/// Builds the profile: values `samples/count` and `cpu/nanoseconds` (one sample = 1/`hz` s),
/// labels `namespace`, `pod`, `container` (when set) and `pid`.
pub fn build(rows: &[StackRow], hz: u64, time_nanos: i64, duration_nanos: i64) -> Profile {
    let mut b = Builder::default();
    b.string("");
    let period = 1_000_000_000 / hz.max(1) as i64;
    let samples = ValueType {
        r#type: b.string("samples"),
        unit: b.string("count"),
    };
    let cpu = ValueType {
        r#type: b.string("cpu"),
        unit: b.string("nanoseconds"),
    };
    b.profile.sample_type = vec![samples, cpu.clone()];
    b.profile.period_type = Some(cpu);
    b.profile.period = period;
    b.profile.time_nanos = time_nanos;
    b.profile.duration_nanos = duration_nanos;
    let filename = b.string("[sonde]");
    b.profile.mapping.push(Mapping {
        id: 1,
        memory_start: 0,
        memory_limit: 0,
        file_offset: 0,
        filename,
        build_id: 0,
        has_functions: true,
        has_filenames: true,
        has_line_numbers: true,
        has_inline_frames: true,
    });
    let comment = b.string(&format!(
        "sonde: frame-pointer stacks; [truncated: no frame pointers] marks stacks that end early; \
         kernel frames start with {KERNEL_PREFIX:?}"
    ));
    b.profile.comment.push(comment);
    for row in rows {
        let location_id: Vec<u64> = row
            .stack
            .split(';')
            .filter(|f| !f.is_empty())
            .rev()
            .map(|f| b.location(f))
            .collect();
        let mut label: Vec<Label> = [
            ("namespace", &row.namespace),
            ("pod", &row.pod),
            ("container", &row.container),
        ]
        .into_iter()
        .filter_map(|(k, v)| b.label(k, v))
        .collect();
        label.push(Label {
            key: b.string("pid"),
            str: 0,
            num: row.pid,
            num_unit: 0,
        });
        b.profile.sample.push(Sample {
            location_id,
            value: vec![row.count, row.count * period],
            label,
        });
    }
    b.profile
}

/// The profile encoded and gzip'd, as pprof files are.
pub fn encode_gzip(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_function_file_and_line() {
        assert_eq!(parse_frame("main (hot.c:12)"), ("main", "hot.c", 12));
        assert_eq!(parse_frame("main"), ("main", "", 0));
        assert_eq!(parse_frame("f (x.go)"), ("f", "x.go", 0));
        assert_eq!(
            parse_frame("<T as core::fmt::Debug>::fmt (src/lib.rs:3)"),
            ("<T as core::fmt::Debug>::fmt", "src/lib.rs", 3)
        );
        assert_eq!(
            parse_frame("[k] do_syscall_64"),
            ("[k] do_syscall_64", "", 0)
        );
    }

    #[test]
    fn rows_become_samples_with_shared_locations_and_labels() {
        let rows = vec![
            StackRow {
                namespace: "shop".into(),
                pod: "cart-1".into(),
                container: "app".into(),
                pid: 7,
                stack: "main (a.c:3);hot (a.c:9)".into(),
                count: 3,
            },
            StackRow {
                namespace: String::new(),
                pod: String::new(),
                container: String::new(),
                pid: 8,
                stack: "main (a.c:3);cold (a.c:20)".into(),
                count: 1,
            },
        ];
        let p = build(&rows, 100, 1, 2);
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.location.len(), 3, "main is shared");
        assert_eq!(p.sample[0].value, vec![3, 30_000_000]);
        // Leaf first: hot, then main.
        let hot = &p.location[p.sample[0].location_id[0] as usize - 1];
        let f = &p.function[hot.line[0].function_id as usize - 1];
        assert_eq!(p.string_table[f.name as usize], "hot");
        assert_eq!(hot.line[0].line, 9);
        assert_eq!(p.sample[0].label.len(), 4);
        assert_eq!(p.sample[1].label.len(), 1, "only pid for a host process");
        let bytes = encode_gzip(&p).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
    }
}
