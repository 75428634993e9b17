//! Finds the field path (`services[0].ports[1].port`) at a line and column of a YAML document.
//! serde-saphyr reports syntax, type and unknown-field errors with a position only; re-reading the
//! document as a generic tree with spans lets those errors name the field like our own do.
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Fallback when the document cannot be read as a tree (e.g. a syntax error).
const UNKNOWN: &str = "(document)";

/// The field path whose key or value starts last at or before (`line`, `column`).
pub(super) fn path_at(text: &str, line: u64, column: u64) -> String {
    let Ok(root) = serde_saphyr::from_str::<Node>(text) else {
        return UNKNOWN.to_owned();
    };
    let mut marks = Vec::new();
    root.collect(String::new(), &mut marks);
    marks
        .into_iter()
        .filter(|(pos, _)| *pos <= (line, column))
        .max_by_key(|(pos, _)| *pos)
        .map(|(_, path)| path)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| UNKNOWN.to_owned())
}

enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

type Marks = Vec<((u64, u64), String)>;

fn pos<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line(), s.referenced.column())
}

impl Node {
    fn collect(&self, path: String, marks: &mut Marks) {
        match self {
            Node::Scalar => {}
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    marks.push((pos(item), p.clone()));
                    item.value.collect(p, marks);
                }
            }
            Node::Map(entries) => {
                for (key, value) in entries {
                    let p = if path.is_empty() {
                        key.value.clone()
                    } else {
                        format!("{path}.{}", key.value)
                    };
                    marks.push((pos(key), p.clone()));
                    marks.push((pos(value), p.clone()));
                    value.value.collect(p, marks);
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}
