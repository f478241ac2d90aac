//! Capture expressions: `arg`, `arg.field.sub` (pointers are followed at each hop), `x[i]`,
//! `len(x)`, and results by index (`$0`, `$1.Field`) or by name. Hand-written: the grammar is five
//! rules and the errors must name the expression.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// An argument or a named result.
    Name(String),
    /// The n-th result, counting from 0.
    Result(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    pub root: Root,
    pub path: Vec<Step>,
    /// `len(…)` around the path.
    pub len: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "expression {expr:?} is not valid: {why}; write an argument (req), a field path (req.User.Name), \
     an element (items[0]), len(x), or a result ($0, $1 or its name)"
)]
pub struct ExprError {
    pub expr: String,
    pub why: String,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '~'
}

pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let fail = |why: String| ExprError {
        expr: text.to_owned(),
        why,
    };
    let t = text.trim();
    let (inner, len) = match t.strip_prefix("len(") {
        Some(rest) => (
            rest.strip_suffix(')')
                .ok_or_else(|| fail("len( is not closed".into()))?
                .trim(),
            true,
        ),
        None => (t, false),
    };
    let mut chars = inner.char_indices().peekable();
    let root_end = inner
        .char_indices()
        .find(|&(i, c)| !(is_ident(c) || (i == 0 && c == '$')))
        .map_or(inner.len(), |(i, _)| i);
    let root_text = &inner[..root_end];
    if root_text.is_empty() {
        return Err(fail("it must start with a name or $N".into()));
    }
    let root = match root_text.strip_prefix('$') {
        Some(n) => Root::Result(
            n.parse()
                .map_err(|_| fail(format!("{root_text} is not $ followed by a number")))?,
        ),
        None => Root::Name(root_text.to_owned()),
    };
    while chars.peek().is_some_and(|&(i, _)| i < root_end) {
        chars.next();
    }
    let mut path = Vec::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '.' => {
                let start = i + 1;
                let mut end = start;
                while let Some(&(j, c)) = chars.peek() {
                    if !is_ident(c) {
                        break;
                    }
                    end = j + c.len_utf8();
                    chars.next();
                }
                if end == start {
                    return Err(fail(format!("a field name is missing after '.' at {i}")));
                }
                path.push(Step::Field(inner[start..end].to_owned()));
            }
            '[' => {
                let mut digits = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    digits.push(c);
                }
                if !closed {
                    return Err(fail(format!("'[' at {i} is not closed")));
                }
                let index = digits
                    .trim()
                    .parse()
                    .map_err(|_| fail(format!("index [{digits}] is not a non-negative number")))?;
                path.push(Step::Index(index));
            }
            other => return Err(fail(format!("unexpected {other:?} at {i}"))),
        }
    }
    Ok(Expr { root, path, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_indexes_len_and_results_parse() {
        assert_eq!(
            parse("req.User.Name").unwrap(),
            Expr {
                root: Root::Name("req".into()),
                path: vec![Step::Field("User".into()), Step::Field("Name".into())],
                len: false
            }
        );
        assert_eq!(
            parse("len(req.Tags)").unwrap().path,
            vec![Step::Field("Tags".into())]
        );
        assert!(parse("len(req.Tags)").unwrap().len);
        assert_eq!(parse("$1").unwrap().root, Root::Result(1));
        assert_eq!(
            parse("items[2].ID").unwrap().path,
            vec![Step::Index(2), Step::Field("ID".into())]
        );
    }

    #[test]
    fn malformed_expressions_are_rejected_naming_the_expression() {
        for bad in ["", "req.", "a[x]", "a[1", "len(a", "$x", "a+b", ".a"] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.expr, bad);
            assert!(err.to_string().contains("not valid"), "{err}");
        }
    }
}
