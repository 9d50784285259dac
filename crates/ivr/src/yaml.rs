//! A YAML document as a small tree whose every node knows its line and
//! column, built from `saphyr-parser`'s events. Flow decoding works on this
//! tree rather than through serde so that every error (unknown field, wrong
//! type, duplicate key…) can name the exact place and the field.
//!
//! Deliberately refused: aliases (a flow has no use for them and they are the
//! "billion laughs" vector), more than one document, nesting deeper than
//! [`MAX_DEPTH`].

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span};

/// Nesting deeper than this is refused (no flow needs more than ~6).
pub const MAX_DEPTH: usize = 32;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing at all.
    Null,
    /// Any scalar; `quoted` tells `"10"` from `10`.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys are scalars (complex keys are refused), in document order.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// What the node is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. An empty document is `Value::Null`.
pub fn parse(src: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(src);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| YamlError {
            pos: Pos::from_marker(*e.marker()),
            message: e.info().to_string(),
        })?;
        let pos = Pos::from_marker(span.start);
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {
                continue;
            }
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos,
                        message: "more than one YAML document (one flow per file)".into(),
                    });
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(YamlError {
                    pos,
                    message: "YAML aliases (*name) are not supported in flows".into(),
                });
            }
            Event::Scalar(text, style, _, _) => scalar(text.into_owned(), style, pos),
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(YamlError {
                        pos,
                        message: format!("nested deeper than {MAX_DEPTH} levels"),
                    });
                }
                let open = if matches!(event, Event::SequenceStart(..)) {
                    Open::Seq(Vec::new())
                } else {
                    Open::Map(Vec::new(), None)
                };
                stack.push(Frame { open, pos });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = stack.pop().ok_or_else(|| unbalanced(span))?;
                match frame.open {
                    Open::Seq(items) => Node {
                        value: Value::Seq(items),
                        pos: frame.pos,
                    },
                    Open::Map(entries, _) => Node {
                        value: Value::Map(entries),
                        pos: frame.pos,
                    },
                }
            }
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame {
                open: Open::Seq(items),
                ..
            }) => items.push(node),
            Some(Frame {
                open: Open::Map(entries, pending),
                ..
            }) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    let text = match node.value {
                        Value::Scalar { text, .. } => text,
                        Value::Null => String::new(),
                        _ => {
                            return Err(YamlError {
                                pos: node.pos,
                                message: "only plain keys are supported (not lists or mappings)"
                                    .into(),
                            });
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == text) {
                        return Err(YamlError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key \"{text}\" (first at line {})",
                                first.pos.line
                            ),
                        });
                    }
                    *pending = Some(Key {
                        text,
                        pos: node.pos,
                    });
                }
            },
        }
    }
    Ok(root.unwrap_or(Node {
        value: Value::Null,
        pos: Pos { line: 1, column: 1 },
    }))
}

fn scalar(text: String, style: ScalarStyle, pos: Pos) -> Node {
    let quoted = !matches!(style, ScalarStyle::Plain);
    let value = if !quoted && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
        Value::Null
    } else {
        Value::Scalar { text, quoted }
    };
    Node { value, pos }
}

fn unbalanced(span: Span) -> YamlError {
    YamlError {
        pos: Pos::from_marker(span.start),
        message: "unbalanced YAML structure".into(),
    }
}

struct Frame {
    open: Open,
    pos: Pos,
}

enum Open {
    Seq(Vec<Node>),
    /// Entries so far and a key waiting for its value.
    Map(Vec<(Key, Node)>, Option<Key>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a: 1\nb:\n  c: x\n").unwrap();
        let Value::Map(entries) = n.value else {
            panic!()
        };
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
        let Value::Map(inner) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(inner[0].0.pos, Pos { line: 3, column: 3 });
    }

    #[test]
    fn duplicate_keys_and_aliases_are_refused() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos.line, 3);
        assert!(e.message.contains("duplicate key \"a\""), "{}", e.message);
        let e = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1);
    }
}
