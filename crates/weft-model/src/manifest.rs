//! Manifests: YAML (or JSON) files of Kubernetes objects, several documents
//! per file, or a directory of such files. Errors name the file, the
//! document and the field, so a user can fix the line at fault.

use crate::cluster::Object;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// Kinds weft models; anything else is reported rather than silently kept.
pub use crate::cluster::KINDS;

/// Parses every document of one file.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |field: String, msg: String| ManifestError::Field {
            file: file.to_path_buf(),
            doc: i + 1,
            field,
            msg,
        };
        let v = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err("(document)".into(), e.to_string()))?;
        if v.is_null() {
            continue;
        }
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let obj = match Object::decode(&kind, v) {
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                let path = e.path().to_string();
                return Err(err(
                    if path == "." { "(object)".into() } else { path },
                    e.inner().to_string(),
                ));
            }
            None => match kind.as_str() {
                "" => return Err(err("kind".into(), "missing".into())),
                "List" => {
                    return Err(err(
                        "kind".into(),
                        "List is not supported; use one document per object".into(),
                    ))
                }
                other => {
                    return Err(err(
                        "kind".into(),
                        format!("{other} is not a kind weft handles ({})", KINDS.join(", ")),
                    ))
                }
            },
        };
        let key = obj.key();
        validate_name(&key.name).map_err(|m| err("metadata.name".into(), m))?;
        if !key.namespace.is_empty() {
            validate_name(&key.namespace).map_err(|m| err("metadata.namespace".into(), m))?;
        }
        if let Object::Pod(p) = &obj {
            if p.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
                return Err(err(
                    "spec.containers".into(),
                    "at least one container is required".into(),
                ));
            }
        }
        out.push(obj);
    }
    Ok(out)
}

/// The files of a path: itself, or a directory's .yaml/.yml/.json files
/// (recursively), sorted so loading is deterministic.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_err = |p: &Path, e: std::io::Error| ManifestError::Read {
        file: p.to_path_buf(),
        msg: e.to_string(),
    };
    if !path.is_dir() {
        if !path.exists() {
            return Err(read_err(
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| read_err(&d, e))?
            .flatten()
        {
            // Dot-names are bookkeeping (weft's own `.weft/`, editors' swap
            // files), not manifests.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every object under `path`.
pub fn load(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for f in files(path)? {
        let text = std::fs::read_to_string(&f).map_err(|e| ManifestError::Read {
            file: f.clone(),
            msg: e.to_string(),
        })?;
        out.extend(parse(&f, &text)?);
    }
    Ok(out)
}

/// DNS-1123 label, as the API server enforces for these names.
fn validate_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} must be a DNS label (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_and_names_fields_in_errors() {
        let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    command: [sleep, '1']\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.1.0/24]}\n";
        let objs = parse(Path::new("x.yaml"), y).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].key().to_string(), "Pod/default/web");
        assert_eq!(objs[1].key().to_string(), "Node/node-1");

        let bad =
            "kind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    command: 5\n";
        let e = parse(Path::new("x.yaml"), bad).unwrap_err().to_string();
        assert!(
            e.starts_with("x.yaml (document 1): spec.containers[0].command:"),
            "{e}"
        );

        let e = parse(
            Path::new("y.yaml"),
            "kind: Deployment\nmetadata: {name: d}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kind: Deployment is not a kind"), "{e}");
        let e = parse(
            Path::new("y.yaml"),
            "kind: Pod\nmetadata: {name: Web}\nspec: {containers: [{name: c}]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("metadata.name"), "{e}");
    }
}
