//! Kubernetes manifests as the lab reads them: YAML files (several documents
//! each) or a directory of them. Only the fields the lab acts on are
//! modelled; the rest is ignored, as kubectl's server would keep it.
//!
//! Errors name the file, the document and the field.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {msg}")]
    Read { file: PathBuf, msg: String },
    #[error("{file} (document {doc}): {field}: {msg}")]
    Field {
        file: PathBuf,
        doc: usize,
        field: String,
        msg: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    pub metadata: Metadata,
    pub spec: PodSpec,
}

impl Pod {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `<namespace>/<name>`, how the lab names pods to users.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.metadata.name)
    }
}

/// Every Pod in `path` (a file, or the .yaml/.yml/.json files of a directory,
/// sorted). Other kinds are skipped for now; a malformed document is an error.
pub fn load_pods(path: &Path) -> Result<Vec<Pod>, ManifestError> {
    let mut files = Vec::new();
    if path.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| ManifestError::Read {
            file: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        for e in rd.flatten() {
            let p = e.path();
            if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut pods = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| ManifestError::Read {
            file: f.clone(),
            msg: e.to_string(),
        })?;
        pods.extend(parse_pods(&f, &text)?);
    }
    Ok(pods)
}

pub fn parse_pods(file: &Path, text: &str) -> Result<Vec<Pod>, ManifestError> {
    let mut pods = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let field_err = |field: &str, msg: String| ManifestError::Field {
            file: file.to_path_buf(),
            doc: doc_no,
            field: field.to_string(),
            msg,
        };
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| field_err("(document)", e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind.is_empty() {
            return Err(field_err("kind", "missing".into()));
        }
        if kind != "Pod" {
            continue;
        }
        let pod: Pod = serde_path_to_error::deserialize(value)
            .map_err(|e| field_err(&e.path().to_string(), e.inner().to_string()))?;
        validate_name(&pod.metadata.name).map_err(|m| field_err("metadata.name", m))?;
        validate_name(pod.namespace()).map_err(|m| field_err("metadata.namespace", m))?;
        if pod.spec.containers.is_empty() {
            return Err(field_err("spec.containers", "at least one container is required".into()));
        }
        pods.push(pod);
    }
    Ok(pods)
}

/// DNS-1123 label, as the API server enforces for these names.
fn validate_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{n:?} must be a DNS label (lower-case letters, digits and '-', at most 63)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pods_and_skips_other_kinds() {
        let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    command: [sleep, '1']\n---\nkind: Service\nmetadata: {name: s}\n";
        let pods = parse_pods(Path::new("x.yaml"), y).unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].key(), "default/web");
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let y = "kind: Pod\nmetadata: {name: ok}\nspec: {containers: []}\n---\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    command: 5\n";
        let e = parse_pods(Path::new("x.yaml"), y).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml (document 1): spec.containers"), "{e}");
        let y2 = "kind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    command: 5\n";
        let e = parse_pods(Path::new("x.yaml"), y2).unwrap_err().to_string();
        assert!(e.contains("spec.containers[0].command"), "{e}");
        let e = parse_pods(Path::new("x.yaml"), "kind: Pod\nmetadata: {name: Web_1}\nspec: {containers: [{name: c}]}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata.name"), "{e}");
    }
}
