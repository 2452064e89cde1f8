//! Text the store can keep. PostgreSQL's `text` and `jsonb` refuse the NUL
//! character (U+0000) while the embedded store would keep it, so a caller's
//! text containing it is refused here, before either adapter sees it: the
//! two stores then behave the same, and the caller gets a clear `422`
//! instead of a store error. (A Rust `String` cannot hold the other values
//! PostgreSQL refuses, such as lone surrogates: they fail UTF-8 decoding
//! at the boundary already.)

use thiserror::Error;

/// The one character no store column can hold.
const NUL: char = '\0';

/// Caller text the store cannot keep; `field` names where it was found.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[error("{field} contains the NUL character (U+0000), which cannot be stored")]
pub struct UnstorableText {
    pub field: String,
}

/// Whether `value` can be stored as it is.
pub fn is_storable(value: &str) -> bool {
    !value.contains(NUL)
}

/// Refuses `value` when the store cannot keep it.
pub fn check(field: &str, value: &str) -> Result<(), UnstorableText> {
    if is_storable(value) {
        Ok(())
    } else {
        Err(UnstorableText {
            field: field.to_owned(),
        })
    }
}

/// Like [`check`] for an optional value.
pub fn check_opt(field: &str, value: Option<&str>) -> Result<(), UnstorableText> {
    value.map_or(Ok(()), |v| check(field, v))
}

/// Refuses a JSON document with unstorable text in any string or object
/// key, naming the first one found by its JSON Pointer (RFC 6901), e.g.
/// `/params/model`.
pub fn check_json(value: &serde_json::Value) -> Result<(), UnstorableText> {
    fn walk(value: &serde_json::Value, at: &mut String) -> Result<(), UnstorableText> {
        match value {
            serde_json::Value::String(s) => check(pointer(at), s),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&i.to_string());
                    walk(item, at)?;
                    at.truncate(len);
                }
                Ok(())
            }
            serde_json::Value::Object(fields) => {
                for (key, item) in fields {
                    let len = at.len();
                    at.push('/');
                    if !is_storable(key) {
                        // The key itself cannot be named safely: show it escaped.
                        at.push_str(&key.escape_default().to_string());
                        return Err(UnstorableText {
                            field: format!("the key at {at}"),
                        });
                    }
                    at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    walk(item, at)?;
                    at.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn pointer(at: &str) -> &str {
        if at.is_empty() {
            "the body"
        } else {
            at
        }
    }
    walk(value, &mut String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_refused_and_everything_else_kept() {
        assert!(check("prompt", "a fox\u{0}").is_err());
        assert_eq!(
            check("prompt", "\u{0}").unwrap_err().to_string(),
            "prompt contains the NUL character (U+0000), which cannot be stored"
        );
        for fine in [
            "",
            "plain",
            "\u{1}\u{7f}\u{ffff}\u{10ffff}",
            "🦊 日本語 مرحبا",
            "e\u{301}",
            "\\u0000",
        ] {
            assert!(check("prompt", fine).is_ok(), "{fine:?} refused");
        }
        assert!(check_opt("note", None).is_ok());
        assert!(check_opt("note", Some("x\u{0}")).is_err());
    }

    #[test]
    fn json_is_searched_everywhere_and_the_place_named() {
        assert!(check_json(&json!({"a": [1, "b", {"c": null}], "d": 2.5})).is_ok());
        let at = |v: serde_json::Value| check_json(&v).unwrap_err().field;
        assert_eq!(at(json!({"prompt": "x\u{0}"})), "/prompt");
        assert_eq!(at(json!({"a": [0, {"b/c~": "\u{0}"}]})), "/a/1/b~1c~0");
        assert_eq!(at(json!("\u{0}")), "the body");
        assert_eq!(at(json!({"k\u{0}": 1})), "the key at /k\\u{0}");
    }
}
