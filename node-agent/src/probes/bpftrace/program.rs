//! What the agent needs to know from a bpftrace program's text, without a full bpftrace parser:
//! the `printf` format literals, each map's key arity, and the top-level items (attach points,
//! predicate, block) of each probe.
//!
//! Hand-written: there is no Rust crate that parses bpftrace's language, and these questions only
//! need a scanner that knows strings, comments and brace depth.
use std::collections::BTreeMap;
use std::ops::Range;

/// `printf(...)` format strings in program order, with escapes resolved (`\n` → newline).
pub fn printf_formats(program: &str) -> Vec<String> {
    let bytes = program.as_bytes();
    let mut formats = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = skip_comment_or_string(bytes, i) {
            i = next;
            continue;
        }
        if is_word_at(bytes, i, b"printf") {
            let mut j = skip_space(bytes, i + "printf".len());
            if bytes.get(j) == Some(&b'(') {
                j = skip_space(bytes, j + 1);
                if bytes.get(j) == Some(&b'"') {
                    let (literal, end) = string_literal(bytes, j);
                    formats.push(literal);
                    i = end;
                    continue;
                }
            }
            i += "printf".len();
            continue;
        }
        i += 1;
    }
    formats
}

/// Number of keys of every keyed map (`@m[pid, comm]` → 2), by map name without `@`.
/// Scalar maps (`@s = count()`) are absent. Used to split bpftrace's `"1234,bash"` JSON keys.
pub fn map_key_arity(program: &str) -> BTreeMap<String, usize> {
    let bytes = program.as_bytes();
    let mut arity = BTreeMap::new();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = skip_comment_or_string(bytes, i) {
            i = next;
            continue;
        }
        if bytes[i] == b'@' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            let name = &program[start..j];
            if bytes.get(j) == Some(&b'[') {
                let (keys, end) = count_top_level_items(bytes, j + 1);
                arity.entry(name.to_string()).or_insert(keys);
                i = end;
                continue;
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    arity
}

/// Byte ranges of every attach point (`tracepoint:syscalls:sys_enter_openat`, `uprobe:/bin/x:f`,
/// `BEGIN`, …) outside action blocks, in program order.
pub fn attach_points(program: &str) -> Vec<Range<usize>> {
    probe_headers(program)
        .into_iter()
        .flat_map(|header| header.points)
        .collect()
}

/// One top-level item: its words before the block (attach points, or `struct x` for a C
/// definition), its predicate if any, and where its block opens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    pub points: Vec<Range<usize>>,
    /// From just after the opening `/` to the closing `/` (excluded); when there is no closing
    /// `/`, to the block (or the end of the program).
    pub predicate: Option<Range<usize>>,
    /// Index of the `{` that opens the block; None when the program ends first.
    pub block: Option<usize>,
}

/// The program's top-level items in order (`#include` lines, comments and `;` skipped).
pub fn probe_headers(program: &str) -> Vec<Header> {
    let bytes = program.as_bytes();
    let mut headers = Vec::new();
    let mut current = Header::default();
    let mut i = 0;
    let mut line_start = true;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        // `;` ends C definitions (`struct x { int a; };`).
        if c.is_ascii_whitespace() || c == b',' || c == b';' {
            i += 1;
            continue;
        }
        if c == b'#' && line_start {
            // Preprocessor line (`#include`).
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        line_start = false;
        if let Some(next) = skip_comment_or_string(bytes, i) {
            i = next;
            continue;
        }
        match c {
            b'{' => {
                current.block = Some(i);
                headers.push(std::mem::take(&mut current));
                i = skip_block(bytes, i);
            }
            // A predicate (`/pid == 1/`): attach points never start with '/'. It may divide
            // (`/a / b > 1/`): the last '/' before the block closes it.
            b'/' => {
                let mut j = i + 1;
                let mut closing = None;
                while j < bytes.len() && bytes[j] != b'{' {
                    if let Some(next) = skip_comment_or_string(bytes, j) {
                        j = next;
                        continue;
                    }
                    if bytes[j] == b'/' {
                        closing = Some(j);
                    }
                    j += 1;
                }
                current.predicate = Some(i + 1..closing.unwrap_or(j));
                i = j;
            }
            _ => {
                let start = i;
                while i < bytes.len() {
                    let b = bytes[i];
                    if b.is_ascii_whitespace() || b == b',' || b == b'{' {
                        break;
                    }
                    if b == b'"' {
                        i = string_literal(bytes, i).1;
                        continue;
                    }
                    i += 1;
                }
                current.points.push(start..i);
            }
        }
    }
    if current != Header::default() {
        headers.push(current);
    }
    headers
}

/// A kernel facility some probe types need, named as in the agent's capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelFacility {
    /// `kprobe:`, `kretprobe:`.
    Kprobes,
    /// `fentry:`, `fexit:` (BPF trampolines).
    Fentry,
}

/// The probe types of the attach points that need kprobes or fentry, each once, in program order:
/// `kprobe:f, fexit:g { }` → `[("kprobe", Kprobes), ("fexit", Fentry)]`.
pub fn kernel_probe_types(program: &str) -> Vec<(String, KernelFacility)> {
    let mut found: Vec<(String, KernelFacility)> = Vec::new();
    for range in attach_points(program) {
        let Some((kind, _)) = program[range].split_once(':') else {
            continue;
        };
        // bpftrace's short and older names included.
        let facility = match kind {
            "kprobe" | "kretprobe" | "k" | "kr" => KernelFacility::Kprobes,
            "fentry" | "fexit" | "kfunc" | "kretfunc" | "f" | "fr" => KernelFacility::Fentry,
            _ => continue,
        };
        if !found.iter().any(|(k, _)| k == kind) {
            found.push((kind.to_owned(), facility));
        }
    }
    found
}

/// If a comment or string literal starts at `i`, the index just after it.
fn skip_comment_or_string(bytes: &[u8], i: usize) -> Option<usize> {
    match (bytes[i], bytes.get(i + 1)) {
        (b'/', Some(b'/')) => {
            let mut j = i;
            while j < bytes.len() && bytes[j] != b'\n' {
                j += 1;
            }
            Some(j)
        }
        (b'/', Some(b'*')) => {
            let mut j = i + 2;
            while j + 1 < bytes.len() && !(bytes[j] == b'*' && bytes[j + 1] == b'/') {
                j += 1;
            }
            Some((j + 2).min(bytes.len()))
        }
        (b'"', _) => Some(string_literal(bytes, i).1),
        _ => None,
    }
}

/// Skips a `{ … }` block (nested braces, strings and comments inside) starting at `i`.
fn skip_block(bytes: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < bytes.len() {
        if let Some(next) = skip_comment_or_string(bytes, i) {
            i = next;
            continue;
        }
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Reads the string literal whose opening quote is at `start`: (unescaped text, index after it).
fn string_literal(bytes: &[u8], start: usize) -> (String, usize) {
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return (String::from_utf8_lossy(&out).into_owned(), i + 1),
            b'\\' if i + 1 < bytes.len() => {
                let unescaped = match bytes[i + 1] {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'0' => 0,
                    other => other,
                };
                out.push(unescaped);
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), i)
}

/// Counts comma-separated items up to the matching `]`; returns (items, index after `]`).
fn count_top_level_items(bytes: &[u8], mut i: usize) -> (usize, usize) {
    let mut depth = 0usize;
    let mut items = 1;
    while i < bytes.len() {
        if let Some(next) = skip_comment_or_string(bytes, i) {
            i = next;
            continue;
        }
        match bytes[i] {
            b'(' | b'[' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b']' if depth == 0 => return (items, i + 1),
            b']' => depth -= 1,
            b',' if depth == 0 => items += 1,
            _ => {}
        }
        i += 1;
    }
    (items, i)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_word_at(bytes: &[u8], i: usize, word: &[u8]) -> bool {
    bytes[i..].starts_with(word)
        && (i == 0 || !is_ident(bytes[i - 1]))
        && bytes.get(i + word.len()).is_none_or(|b| !is_ident(*b))
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM: &str = r#"
#include <linux/sched.h>
// a comment with printf("not this\n")
tracepoint:syscalls:sys_enter_openat,
tracepoint:syscalls:sys_enter_open /pid != 1 && comm != "x{"/
{
  printf("time_:%llu pid:%d file:%s\n", nsecs, pid, str(args->filename));
  @opens[pid, comm] = count();
  @bytes[str(args->filename, 8)] = sum(1);
  if (pid > 0) { @s = count(); }
}
uprobe:/usr/bin/bash:readline { printf ("line:%s\n", "a \"quoted\" }"); }
END { print(@opens); }
"#;

    #[test]
    fn printf_formats_are_read_with_escapes_resolved_and_comments_ignored() {
        assert_eq!(
            printf_formats(PROGRAM),
            vec![
                "time_:%llu pid:%d file:%s\n".to_string(),
                "line:%s\n".to_string()
            ]
        );
    }

    #[test]
    fn map_arity_counts_top_level_keys_only() {
        let arity = map_key_arity(PROGRAM);
        assert_eq!(arity.get("opens"), Some(&2));
        assert_eq!(arity.get("bytes"), Some(&1));
        assert_eq!(arity.get("s"), None);
    }

    #[test]
    fn attach_points_skip_predicates_blocks_and_includes() {
        let points: Vec<&str> = attach_points(PROGRAM)
            .into_iter()
            .map(|r| &PROGRAM[r])
            .collect();
        assert_eq!(
            points,
            vec![
                "tracepoint:syscalls:sys_enter_openat",
                "tracepoint:syscalls:sys_enter_open",
                "uprobe:/usr/bin/bash:readline",
                "END",
            ]
        );
    }

    #[test]
    fn kernel_probe_types_name_each_kprobe_and_fentry_kind_once() {
        let program = "kprobe:a, k:b, kretprobe:c { }\nfexit:d { }\nkprobe:e { }\nuprobe:/bin/x:f, tracepoint:g:h { }";
        assert_eq!(
            kernel_probe_types(program),
            vec![
                ("kprobe".to_string(), KernelFacility::Kprobes),
                ("k".to_string(), KernelFacility::Kprobes),
                ("kretprobe".to_string(), KernelFacility::Kprobes),
                ("fexit".to_string(), KernelFacility::Fentry),
            ]
        );
        assert!(kernel_probe_types(PROGRAM).is_empty());
    }
}
