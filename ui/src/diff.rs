//! A structural diff of two JSON values, for comparing two versions of a pointer. Objects
//! are compared key by key, arrays index by index, anything else as a whole.

use serde_json::Value;

/// How one path differs between the old and the new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added { path: String, new: String },
    Removed { path: String, old: String },
    Changed { path: String, old: String, new: String },
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Added { path, .. } | Change::Removed { path, .. } | Change::Changed { path, .. } => path,
        }
    }
}

/// Every difference from `old` to `new`, in path order. `None` stands for "absent"
/// (a pointer that did not exist or was deleted at that version).
pub fn diff(old: Option<&Value>, new: Option<&Value>) -> Vec<Change> {
    let mut out = Vec::new();
    walk("$".to_string(), old, new, &mut out);
    out
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn walk(path: String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Change>) {
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => out.push(Change::Added { path, new: show(n) }),
        (Some(o), None) => out.push(Change::Removed { path, old: show(o) }),
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(format!("{path}.{}", key_segment(k)), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                walk(format!("{path}[{i}]"), a.get(i), b.get(i), out);
            }
        }
        (Some(o), Some(n)) if o == n => {}
        (Some(o), Some(n)) => out.push(Change::Changed { path, old: show(o), new: show(n) }),
    }
}

/// A key as a path segment: bare when it is an identifier, quoted otherwise.
fn key_segment(k: &str) -> String {
    let ident = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if ident { k.to_string() } else { format!("[{}]", serde_json::to_string(k).unwrap_or_default()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_have_no_changes() {
        let v = json!({"a": [1, 2, {"b": null}]});
        assert!(diff(Some(&v), Some(&v)).is_empty());
    }

    #[test]
    fn nested_changes_are_named_by_path() {
        let a = json!({"n": 1, "tags": ["x", "y"], "gone": true, "odd key": 1});
        let b = json!({"n": 2, "tags": ["x"], "new": {"k": 1}, "odd key": 1});
        assert_eq!(
            diff(Some(&a), Some(&b)),
            vec![
                Change::Removed { path: "$.gone".into(), old: "true".into() },
                Change::Changed { path: "$.n".into(), old: "1".into(), new: "2".into() },
                Change::Added { path: "$.new".into(), new: r#"{"k":1}"#.into() },
                Change::Removed { path: "$.tags[1]".into(), old: r#""y""#.into() },
            ]
        );
    }

    #[test]
    fn absent_and_type_changes() {
        assert_eq!(diff(None, Some(&json!(3))), vec![Change::Added { path: "$".into(), new: "3".into() }]);
        assert_eq!(
            diff(Some(&json!({"a": 1})), Some(&json!([1]))),
            vec![Change::Changed { path: "$".into(), old: r#"{"a":1}"#.into(), new: "[1]".into() }]
        );
        assert_eq!(
            diff(Some(&json!({"1x": 1})), Some(&json!({}))),
            vec![Change::Removed { path: r#"$.["1x"]"#.into(), old: "1".into() }]
        );
    }
}
