//! Hints for a spec file that does not parse: a single value where a mapping belongs (the
//! natural `storage: shared`) or the reverse, named with what to write instead.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::ClusterSpec;

/// The shape of a YAML value, with a scalar's text.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Map(Vec<(String, Shape)>),
    List,
    Scalar(String),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Shape, E> {
        Ok(Shape::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shape, E> {
        Ok(Shape::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shape, E> {
        Ok(Shape::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Shape, E> {
        Ok(Shape::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shape, E> {
        Ok(Shape::Scalar(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar(String::new()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar(String::new()))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        Shape::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Shape::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<Shape>()? {
            let v = map.next_value::<Shape>()?;
            if let Shape::Scalar(k) = k {
                out.push((k, v));
            }
        }
        Ok(Shape::Map(out))
    }
}

/// The field a single value most likely meant, for a section written as a single value.
fn meant_field(section: &str, value: &str) -> Option<&'static str> {
    match section {
        "storage" => Some("mode"),
        "nfs" if value.starts_with('/') => Some("export"),
        "nfs" => Some("server"),
        "postgres" | "agent" => Some("image"),
        _ => None,
    }
}

/// A hint for the first place where `text` has a single value where the spec expects a
/// mapping, or a mapping or list where it expects a single value; `None` when the shapes agree
/// (the error is of another kind) or the text is not YAML at all.
pub(crate) fn shape_hint(text: &str) -> Option<String> {
    let given: Shape = serde_saphyr::from_str(text).ok()?;
    let wanted: Shape = serde_saphyr::from_str(&ClusterSpec::default().to_yaml()).ok()?;
    compare("", &given, &wanted)
}

fn compare(path: &str, given: &Shape, wanted: &Shape) -> Option<String> {
    let (Shape::Map(given), Shape::Map(wanted)) = (given, wanted) else {
        return None;
    };
    for (key, value) in given {
        let Some((_, expected)) = wanted.iter().find(|(k, _)| k == key) else {
            continue;
        };
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match (value, expected) {
            (Shape::Scalar(_) | Shape::List, Shape::Map(fields)) => {
                let v = match value {
                    Shape::Scalar(v) => v.as_str(),
                    _ => "...",
                };
                let field = meant_field(key, v)
                    .or_else(|| fields.first().map(|(f, _)| f.as_str()))
                    .unwrap_or("FIELD");
                let v = if v.is_empty() { "VALUE" } else { v };
                return Some(format!(
                    "`{full}` expects a mapping: write `{key}: {{{field}: {v}}}`"
                ));
            }
            (Shape::Map(_) | Shape::List, Shape::Scalar(example)) => {
                let what = if matches!(value, Shape::List) {
                    "a list"
                } else {
                    "a mapping"
                };
                return Some(format!(
                    "`{full}` expects a single value, not {what}: write e.g. `{key}: {example}`"
                ));
            }
            (Shape::Map(_), Shape::Map(_)) => {
                if let Some(h) = compare(&full, value, expected) {
                    return Some(h);
                }
            }
            _ => {}
        }
    }
    None
}
