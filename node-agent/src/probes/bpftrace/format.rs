//! `printf` formats as table schemas (Pixie's convention): every `name:%fmt` token is a column.
//!
//! A [`Format`] is parsed from one format string; [`Formats`] is the union over a program's formats
//! and turns an output line back into typed values. Matching rules: the literal text between tokens
//! must match exactly; a value extends up to the next literal (so `%s` holds spaces only when a
//! literal follows it or it is the last token). Conversion → type: `%d %i` (any length) → Int64,
//! `%u %x %o %p` → UInt64 (hex and octal parsed), `%s %c` → String, `%f %e %g` → Float64.
//! Tokens without a `name:` prefix become `arg<N>` columns.
//! Hand-written: a format-string *inverse* (scanf for bpftrace's printf) is not in any crate.
use crate::tables::{Column, ColumnType, Value};

/// Columns that the runtime fills itself; a printf token with one of these names is not a column.
/// `time_` and `pid` are read from the line; the others come from the target process.
pub const RESERVED_COLUMNS: [&str; 6] = ["time_", "node", "namespace", "pod", "container", "pid"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conversion {
    Signed,
    Unsigned,
    Hex,
    Octal,
    Pointer,
    Text,
    Char,
    Float,
}

impl Conversion {
    /// Characters a printed value of this conversion can consist of.
    fn may_contain(self, c: char) -> bool {
        match self {
            Conversion::Signed | Conversion::Unsigned | Conversion::Octal => {
                c.is_ascii_digit() || c == '-'
            }
            Conversion::Hex | Conversion::Pointer => c.is_ascii_hexdigit() || c == 'x' || c == 'X',
            Conversion::Float => c.is_ascii_digit() || "-+.eEinfa".contains(c),
            Conversion::Text | Conversion::Char => !c.is_whitespace(),
        }
    }

    fn column_type(self) -> ColumnType {
        match self {
            Conversion::Signed => ColumnType::Int64,
            Conversion::Unsigned | Conversion::Hex | Conversion::Octal | Conversion::Pointer => {
                ColumnType::UInt64
            }
            Conversion::Text | Conversion::Char => ColumnType::String,
            Conversion::Float => ColumnType::Float64,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Token {
    name: String,
    conversion: Conversion,
}

/// One printf format: `literals.len() == tokens.len() + 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Format {
    literals: Vec<String>,
    tokens: Vec<Token>,
}

impl Format {
    pub fn parse(format: &str) -> Format {
        let mut literals = Vec::new();
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                literal.push('%');
                continue;
            }
            // Flags, width, precision and length modifiers carry no type information we need.
            let mut conversion = None;
            for c in chars.by_ref() {
                if "-+ #0123456789.hlLqjzt".contains(c) {
                    continue;
                }
                conversion = match c {
                    'd' | 'i' => Some(Conversion::Signed),
                    'u' => Some(Conversion::Unsigned),
                    'x' | 'X' => Some(Conversion::Hex),
                    'o' => Some(Conversion::Octal),
                    'p' => Some(Conversion::Pointer),
                    's' | 'r' => Some(Conversion::Text),
                    'c' => Some(Conversion::Char),
                    'f' | 'F' | 'e' | 'E' | 'g' | 'G' => Some(Conversion::Float),
                    _ => None,
                };
                break;
            }
            let Some(conversion) = conversion else {
                // Not a conversion bpftrace knows: keep the text literal so matching stays strict.
                literal.push('%');
                continue;
            };
            let name = trailing_name(&literal)
                .map(str::to_string)
                .unwrap_or_else(|| format!("arg{}", tokens.len()));
            literals.push(std::mem::take(&mut literal));
            tokens.push(Token { name, conversion });
        }
        literals.push(literal);
        Format { literals, tokens }
    }

    /// Number of literal characters: a more specific format wins when several match a line.
    fn specificity(&self) -> usize {
        self.literals.iter().map(String::len).sum()
    }

    /// Splits `line` into one text per token, or `None` when the literals do not match.
    fn split<'l>(&self, line: &'l str) -> Option<Vec<(&Token, &'l str)>> {
        let mut rest = line.strip_prefix(self.literals[0].as_str())?;
        let mut parts = Vec::with_capacity(self.tokens.len());
        for (index, token) in self.tokens.iter().enumerate() {
            let next = &self.literals[index + 1];
            let is_last = index + 1 == self.tokens.len();
            let end = if is_last {
                rest.strip_suffix(next.as_str())?.len()
            } else if !next.is_empty() {
                rest.find(next.as_str())?
            } else {
                // Two tokens without text between them: the value ends where its syntax does.
                rest.find(|c: char| !token.conversion.may_contain(c))
                    .unwrap_or(rest.len())
            };
            parts.push((token, &rest[..end]));
            rest = &rest[end + next.len()..];
        }
        rest.is_empty().then_some(parts)
    }
}

/// The literal text before a token ends in `name:` → `name`.
fn trailing_name(literal: &str) -> Option<&str> {
    let before = literal.strip_suffix(':')?;
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &before[start..];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

/// A line matched against the program's formats.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedLine {
    /// `time_` token value (bpftrace's `nsecs`, CLOCK_MONOTONIC), if the format has one.
    pub monotonic_ns: Option<i64>,
    pub pid: Option<i64>,
    /// One value per column of [`Formats::columns`] (Null where this format has no such token).
    pub values: Vec<Value>,
}

/// Every printf format of a program and the union of their columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Formats {
    formats: Vec<Format>,
    columns: Vec<Column>,
}

impl Formats {
    pub fn new(format_strings: &[String]) -> Formats {
        let formats: Vec<Format> = format_strings.iter().map(|f| Format::parse(f)).collect();
        let mut columns: Vec<Column> = Vec::new();
        for token in formats.iter().flat_map(|f| &f.tokens) {
            if RESERVED_COLUMNS.contains(&token.name.as_str())
                || columns.iter().any(|c| c.name == token.name)
            {
                continue;
            }
            columns.push(Column::new(
                token.name.clone(),
                token.conversion.column_type(),
            ));
        }
        Formats { formats, columns }
    }

    pub fn is_empty(&self) -> bool {
        self.formats.is_empty()
    }

    /// The probe's own columns (the store prepends the target columns).
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Parses one printf line (as bpftrace emits it, with its trailing newline).
    pub fn parse_line(&self, line: &str) -> Option<ParsedLine> {
        let (_, parts) = self
            .formats
            .iter()
            .filter_map(|f| Some((f.specificity(), f.split(line)?)))
            .max_by_key(|(specificity, _)| *specificity)?;
        let mut parsed = ParsedLine {
            monotonic_ns: None,
            pid: None,
            values: vec![Value::Null; self.columns.len()],
        };
        for (token, text) in parts {
            match token.name.as_str() {
                "time_" => {
                    parsed.monotonic_ns = Some(as_i64(parse_value(token.conversion, text)?)?)
                }
                "pid" => parsed.pid = Some(as_i64(parse_value(token.conversion, text)?)?),
                name if RESERVED_COLUMNS.contains(&name) => {}
                name => {
                    let index = self.columns.iter().position(|c| c.name == name)?;
                    let value = parse_value(token.conversion, text)?;
                    parsed.values[index] = coerce(value, self.columns[index].ty)?;
                }
            }
        }
        Some(parsed)
    }
}

fn parse_value(conversion: Conversion, text: &str) -> Option<Value> {
    let trimmed = text.trim();
    Some(match conversion {
        Conversion::Signed => Value::Int64(trimmed.parse().ok()?),
        Conversion::Unsigned => Value::UInt64(trimmed.parse().ok()?),
        Conversion::Hex | Conversion::Pointer => {
            let digits = trimmed.trim_start_matches("0x").trim_start_matches("0X");
            Value::UInt64(u64::from_str_radix(digits, 16).ok()?)
        }
        Conversion::Octal => Value::UInt64(u64::from_str_radix(trimmed, 8).ok()?),
        Conversion::Float => Value::Float64(trimmed.parse().ok()?),
        Conversion::Text | Conversion::Char => Value::String(text.to_string()),
    })
}

/// Two formats may give one column different conversions; the first one's type wins.
fn coerce(value: Value, ty: ColumnType) -> Option<Value> {
    Some(match (value, ty) {
        (Value::Int64(v), ColumnType::UInt64) => Value::UInt64(u64::try_from(v).ok()?),
        (Value::UInt64(v), ColumnType::Int64) => Value::Int64(i64::try_from(v).ok()?),
        (Value::Int64(v), ColumnType::Float64) => Value::Float64(v as f64),
        (Value::UInt64(v), ColumnType::Float64) => Value::Float64(v as f64),
        (Value::String(s), ColumnType::String) => Value::String(s),
        (v @ Value::Int64(_), ColumnType::Int64)
        | (v @ Value::UInt64(_), ColumnType::UInt64)
        | (v @ Value::Float64(_), ColumnType::Float64) => v,
        (other, ColumnType::String) => Value::String(match other {
            Value::Int64(v) => v.to_string(),
            Value::UInt64(v) => v.to_string(),
            Value::Float64(v) => v.to_string(),
            _ => return None,
        }),
        _ => return None,
    })
}

fn as_i64(value: Value) -> Option<i64> {
    match value {
        Value::Int64(v) => Some(v),
        Value::UInt64(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(list: &[&str]) -> Formats {
        Formats::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn named_tokens_become_typed_columns_without_reserved_ones() {
        let f = formats(&[
            "time_:%llu pid:%d comm:%s x:%x\n",
            "n:%ld ratio:%f c:%c u:%lu\n",
        ]);
        let columns: Vec<(&str, ColumnType)> = f
            .columns()
            .iter()
            .map(|c| (c.name.as_str(), c.ty))
            .collect();
        assert_eq!(
            columns,
            vec![
                ("comm", ColumnType::String),
                ("x", ColumnType::UInt64),
                ("n", ColumnType::Int64),
                ("ratio", ColumnType::Float64),
                ("c", ColumnType::String),
                ("u", ColumnType::UInt64),
            ]
        );
    }

    #[test]
    fn a_captured_line_parses_into_time_pid_and_values() {
        let f = formats(&["time_:%llu pid:%d comm:%s x:%x\n"]);
        let parsed = f
            .parse_line("time_:429398363287 pid:16169 comm:bash x:ff\n")
            .unwrap();
        assert_eq!(parsed.monotonic_ns, Some(429_398_363_287));
        assert_eq!(parsed.pid, Some(16169));
        assert_eq!(
            parsed.values,
            vec![Value::String("bash".into()), Value::UInt64(255)]
        );
    }

    #[test]
    fn a_string_before_a_literal_may_contain_spaces_and_the_last_one_takes_the_rest() {
        let f = formats(&["a:%s b:%d rest:%s\n"]);
        let parsed = f.parse_line("a:x y b:3 rest:one two three\n").unwrap();
        assert_eq!(
            parsed.values,
            vec![
                Value::String("x y".into()),
                Value::Int64(3),
                Value::String("one two three".into())
            ]
        );
    }

    #[test]
    fn lines_that_match_no_format_are_rejected() {
        let f = formats(&["pid:%d comm:%s\n"]);
        assert_eq!(f.parse_line("hello world\n"), None);
        assert_eq!(f.parse_line("pid:abc comm:x\n"), None);
        assert_eq!(
            f.parse_line("pid:1 comm:x"),
            None,
            "the trailing newline is part of the format"
        );
    }

    #[test]
    fn the_most_specific_format_wins_and_missing_columns_are_null() {
        let f = formats(&["%s\n", "open file:%s\n", "close fd:%d\n"]);
        let parsed = f.parse_line("close fd:7\n").unwrap();
        assert_eq!(
            parsed.values,
            vec![Value::Null, Value::Null, Value::Int64(7)]
        );
        assert_eq!(f.columns()[0].name, "arg0");
    }

    #[test]
    fn percent_escapes_and_unnamed_tokens_are_handled() {
        let f = formats(&["load %d%% of %s\n"]);
        let parsed = f.parse_line("load 42% of cpu0\n").unwrap();
        assert_eq!(
            parsed.values,
            vec![Value::Int64(42), Value::String("cpu0".into())]
        );
    }

    #[test]
    fn negative_numbers_and_adjacent_tokens_parse() {
        let f = formats(&["v:%d%s\n"]);
        let parsed = f.parse_line("v:-12abc\n").unwrap();
        assert_eq!(
            parsed.values,
            vec![Value::Int64(-12), Value::String("abc".into())]
        );
    }
}
