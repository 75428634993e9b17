//! YAML output shared by `inject` and `manifests`: documents with their keys sorted, so the text
//! is the same whichever serde_json features the build unified (`preserve_order` or not), which
//! the golden and drift tests rely on.

use serde_json::{Map, Value};

/// The value with every object's keys in sorted order.
pub fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut sorted = Map::new();
            for (key, item) in entries {
                sorted.insert(key, canonical(item));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// A multi-document stream: each document preceded by `---`.
pub fn stream(docs: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for doc in docs {
        let yaml = serde_saphyr::to_string(&canonical(doc.clone()))?;
        out.push_str("---\n");
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
