//! `stack_traces` rows → an interactive flame graph SVG (inferno). Frames are merged per function
//! (source lines dropped) so a hot function is one box, not one per line.
use std::collections::BTreeMap;

use crate::frames::function_name;
use crate::pprof::StackRow;

/// Folded lines (`root;…;leaf count`), one per distinct function stack, sorted.
pub fn folded(rows: &[StackRow]) -> Vec<String> {
    let mut merged: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        let stack: Vec<&str> = row
            .stack
            .split(';')
            .filter(|f| !f.is_empty())
            .map(function_name)
            .collect();
        if stack.is_empty() {
            continue;
        }
        *merged.entry(stack.join(";")).or_default() += row.count;
    }
    merged
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// The SVG, titled `title`; an empty profile gives a valid SVG saying so.
pub fn svg(rows: &[StackRow], title: &str) -> std::io::Result<Vec<u8>> {
    let lines = folded(rows);
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = "samples".to_owned();
    options.deterministic = true;
    let mut out = Vec::new();
    if lines.is_empty() {
        // inferno refuses empty input; say there is nothing instead of failing.
        let empty = ["[no samples in this time range] 1"];
        inferno::flamegraph::from_lines(&mut options, empty, &mut out)?;
    } else {
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stack: &str, count: i64) -> StackRow {
        StackRow {
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            pid: 1,
            stack: stack.into(),
            count,
        }
    }

    #[test]
    fn lines_of_one_function_merge_into_one_frame() {
        let rows = [
            row("main (a.c:3);hot (a.c:9)", 2),
            row("main (a.c:3);hot (a.c:10)", 3),
            row("main (a.c:4);[k] sys_write", 1),
        ];
        assert_eq!(folded(&rows), vec!["main;[k] sys_write 1", "main;hot 5"]);
    }

    #[test]
    fn the_svg_names_the_frames() {
        let svg = svg(&[row("main (a.c:3);hot (a.c:9)", 2)], "t").unwrap();
        let text = String::from_utf8(svg).unwrap();
        assert!(text.starts_with("<?xml"), "{}", &text[..100]);
        assert!(text.contains("hot"));
        let empty = String::from_utf8(super::svg(&[], "t").unwrap()).unwrap();
        assert!(empty.contains("no samples"));
    }
}
