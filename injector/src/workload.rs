//! `inject` for manifests: finds the pod template in each YAML document (Pod, Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and the items of a List), runs the same
//! `inject::plan` as the webhook on it, and applies the resulting JSON Patch. Other kinds pass
//! through unchanged (re-serialised, so comments are not kept).
//!
//! Documents are handled one at a time, so one bad document (YAML that does not parse, or a
//! workload the plan refuses) does not cost the others: it is reported by number and name and
//! passed through *verbatim*, as `linkerd inject` does. Verbatim rather than dropped, because a
//! `| kubectl apply -f -` that silently lost a resource would be worse than kubectl refusing the
//! same broken text itself; the caller (the CLI) decides the exit status.

use crate::config::InjectorConfig;
use crate::inject::{plan, Outcome};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("writing the YAML: {0}")]
    Write(String),
}

/// One document that could not be injected; it is in the output unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index} ({}): {reason}", self.what())]
pub struct DocumentError {
    /// 1-based, counting the stream's non-empty documents.
    pub index: usize,
    /// The line of the input where the document starts.
    pub line: usize,
    /// `Kind/name` when known (read from the text if the YAML does not parse); a List's item
    /// adds `item N`.
    pub object: Option<String>,
    pub reason: String,
}

impl DocumentError {
    fn what(&self) -> String {
        match &self.object {
            Some(object) => format!("{object}, line {}", self.line),
            None => format!("line {}", self.line),
        }
    }
}

/// One document's fate, for the report on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub index: usize,
    pub kind: String,
    pub name: String,
    /// `None`: injected; `Some(reason)`: left alone.
    pub skipped: Option<String>,
}

/// The result of injecting a stream: the new stream (bad documents unchanged), what happened to
/// each workload, and the documents that could not be injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub output: String,
    pub reports: Vec<Report>,
    pub errors: Vec<DocumentError>,
}

/// Where a kind keeps its pod template (`None`: not a workload).
pub fn template_root(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every workload in a multi-document YAML stream. Only writing the output can fail as a
/// whole; a bad document is in [`Injected::errors`].
pub fn inject_yaml(input: &str, config: &InjectorConfig) -> Result<Injected, ManifestError> {
    let mut out = String::new();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (index, chunk) in split_documents(input).into_iter().enumerate() {
        let index = index + 1;
        let verbatim = |out: &mut String| {
            out.push_str("---\n");
            out.push_str(chunk.text.trim_end_matches('\n'));
            out.push('\n');
        };
        // Leading blank lines put the parser's line numbers on the input's lines.
        let padded = "\n".repeat(chunk.line - 1) + chunk.text;
        let mut doc: Value = match serde_saphyr::from_str(&padded) {
            Ok(doc) => doc,
            Err(e) => {
                errors.push(DocumentError {
                    index,
                    line: chunk.line,
                    object: scan_object(chunk.text),
                    reason: format!("invalid YAML: {}", yaml_reason(&e.to_string())),
                });
                verbatim(&mut out);
                continue;
            }
        };
        if doc.is_null() {
            continue;
        }
        let before = errors.len();
        inject_document(
            &mut doc,
            index,
            chunk.line,
            None,
            config,
            &mut reports,
            &mut errors,
        );
        if errors.len() > before && !is_list(&doc) {
            verbatim(&mut out);
            continue;
        }
        let yaml = crate::yaml::stream(std::slice::from_ref(&doc))
            .map_err(|e| ManifestError::Write(e.to_string()))?;
        out.push_str(&yaml);
    }
    Ok(Injected {
        output: out,
        reports,
        errors,
    })
}

/// The parser's message without its own `error: ` prefix (the CLI adds one).
fn yaml_reason(message: &str) -> &str {
    message.strip_prefix("error: ").unwrap_or(message)
}

fn is_list(doc: &Value) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some("List")
}

/// Injects one object in place, or leaves it unchanged and records why. `item`: its position
/// in a List.
fn inject_document(
    doc: &mut Value,
    index: usize,
    line: usize,
    item: Option<usize>,
    config: &InjectorConfig,
    reports: &mut Vec<Report>,
    errors: &mut Vec<DocumentError>,
) {
    let text = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = text(doc, "/kind");
    let name = text(doc, "/metadata/name");
    if kind == "List" && item.is_none() {
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for (i, entry) in items.iter_mut().enumerate() {
                inject_document(entry, index, line, Some(i + 1), config, reports, errors);
            }
        }
        return;
    }
    let Some(root) = template_root(&kind) else {
        return;
    };
    let mut fail = |reason: String| {
        let object = object_name(&kind, &name);
        errors.push(DocumentError {
            index,
            line,
            object: Some(match item {
                Some(i) => format!("List item {i} {object}"),
                None => object,
            }),
            reason,
        });
    };
    let namespace = match text(doc, "/metadata/namespace") {
        ns if ns.is_empty() => "default".to_string(),
        ns => ns,
    };
    let Some(template) = doc.pointer(root) else {
        return fail(format!("no pod template at {root}"));
    };
    let meta: ObjectMeta = match template.get("metadata") {
        Some(m) => match serde_json::from_value(m.clone()) {
            Ok(meta) => meta,
            Err(e) => return fail(format!("{root}/metadata: {e}")),
        },
        None => ObjectMeta::default(),
    };
    let spec: PodSpec =
        match serde_json::from_value(template.get("spec").cloned().unwrap_or_default()) {
            Ok(spec) => spec,
            Err(e) => return fail(format!("{root}/spec: {e}")),
        };
    let skipped = match plan(&meta, &spec, &namespace, config, root) {
        Ok(Outcome::Skipped(why)) => Some(why),
        Ok(Outcome::Patched(ops)) => {
            // On a copy, so a failed patch leaves the document as it was.
            let mut patched = doc.clone();
            if let Err(e) = json_patch::patch(&mut patched, &ops) {
                return fail(format!("applying the patch: {e}"));
            }
            *doc = patched;
            None
        }
        Err(e) => return fail(e.to_string()),
    };
    reports.push(Report {
        index,
        kind,
        name,
        skipped,
    });
}

fn object_name(kind: &str, name: &str) -> String {
    match (kind, name) {
        ("", "") => "unknown object".to_string(),
        (kind, "") => kind.to_string(),
        ("", name) => format!("?/{name}"),
        (kind, name) => format!("{kind}/{name}"),
    }
}

/// One document's text and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk<'a> {
    line: usize,
    text: &'a str,
}

/// Splits a YAML stream at its `---` document markers (and drops `...` end markers), keeping
/// the text of each document so that one that does not parse can be reported and passed through
/// alone. Documents holding nothing but comments and blank lines are dropped.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (number, line) in input.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker =
            bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") || bare == "...";
        if marker {
            chunks.push(Chunk {
                line: start_line,
                text: &input[start..offset],
            });
            // `--- value` starts a document on the marker's line: keep what follows it.
            let rest = bare.strip_prefix("---").filter(|r| !r.trim().is_empty());
            match rest {
                Some(_) => {
                    start = offset + 3;
                    start_line = number + 1;
                }
                None => {
                    start = offset + line.len();
                    start_line = number + 2;
                }
            }
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        line: start_line,
        text: &input[start..],
    });
    chunks.retain(|c| {
        c.text.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
    });
    // The first content line, for the reported line number.
    for chunk in &mut chunks {
        let skipped = chunk
            .text
            .lines()
            .take_while(|l| l.trim().is_empty() || l.trim().starts_with('#'))
            .count();
        chunk.line += skipped;
    }
    chunks
}

/// `Kind/name` read from the text of a document that does not parse: the top-level `kind:` and
/// the `name:` under the top-level `metadata:`, when they are plain.
fn scan_object(text: &str) -> Option<String> {
    let value = |line: &str, key: &str| {
        line.strip_prefix(key)
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .filter(|v| !v.is_empty())
    };
    let mut kind = None;
    let mut name = None;
    let mut in_metadata = false;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            in_metadata = line.trim_end() == "metadata:";
            if let Some(k) = value(line, "kind:") {
                kind = Some(k);
            }
        } else if in_metadata && name.is_none() {
            if let Some(n) = value(line.trim_start(), "name:") {
                name = Some(n);
            }
        }
    }
    match (kind, name) {
        (None, None) => None,
        (kind, name) => Some(object_name(
            kind.as_deref().unwrap_or_default(),
            name.as_deref().unwrap_or_default(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_with_their_first_lines() {
        let input = "# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\n...\n--- c\n";
        let chunks = split_documents(input);
        let got: Vec<(usize, &str)> = chunks.iter().map(|c| (c.line, c.text)).collect();
        assert_eq!(got, [(3, "a: 1\n"), (7, "b: 2\n"), (9, " c\n")]);
        assert_eq!(split_documents("x: 1").len(), 1);
        assert!(split_documents("").is_empty());
    }

    #[test]
    fn unparseable_documents_are_named_from_their_text() {
        let text =
            "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {a: b}\n  name: \"web\"\nspec: [\n";
        assert_eq!(scan_object(text).as_deref(), Some("Pod/web"));
        assert_eq!(scan_object("kind: Service\n").as_deref(), Some("Service"));
        assert_eq!(scan_object(": : :").as_deref(), None);
    }
}
