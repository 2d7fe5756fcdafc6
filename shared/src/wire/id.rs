//! Ids as producers write them: a JSON string, or an integer read as its decimal string.
//!
//! The original Ruby code puts `current_user.id` (an Integer) in its JWTs and queue messages
//! and stored `user_id.to_s` in its token table, so `42` and `"42"` name the same user.
//! Anything else (a fractional number, a boolean, an object, an array) is refused with an
//! error that says what an id must be.

use serde::Deserializer;
use serde::de::{self, Visitor};
use serde_json::Value;

/// What an id must be, for error messages.
pub const ID_EXPECTED: &str = "a string or an integer";

/// `deserialize_with` for a required id.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(IdVisitor)
}

/// `deserialize_with` for an optional id (`null` and absent are `None`; use with
/// `#[serde(default)]`).
pub fn deserialize_optional<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_option(OptionalIdVisitor)
}

/// The id a JSON value holds: a string as it is, an integer as its decimal string; `None`
/// for anything else.
pub fn from_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// What a JSON value that is not an id is, for error messages ("a fractional number").
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(ID_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
}

struct OptionalIdVisitor;

impl<'de> Visitor<'de> for OptionalIdVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{ID_EXPECTED}, or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Ids {
        #[serde(deserialize_with = "deserialize")]
        required: String,
        #[serde(default, deserialize_with = "deserialize_optional")]
        optional: Option<String>,
    }

    fn parse(json: &str) -> Result<Ids, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn strings_and_integers_are_ids_read_as_decimal_strings() {
        let ids = parse(r#"{"required": 42, "optional": -7}"#).expect("integers");
        assert_eq!(
            (ids.required.as_str(), ids.optional.as_deref()),
            ("42", Some("-7"))
        );
        let ids =
            parse(r#"{"required": "u-1", "optional": "18446744073709551615"}"#).expect("strings");
        assert_eq!(
            (ids.required.as_str(), ids.optional.as_deref()),
            ("u-1", Some("18446744073709551615"))
        );
        let ids = parse(r#"{"required": 18446744073709551615}"#).expect("the largest u64");
        assert_eq!(ids.required, "18446744073709551615");
        assert_eq!(ids.optional, None);
        let ids = parse(r#"{"required": 0, "optional": null}"#).expect("null optional");
        assert_eq!((ids.required.as_str(), ids.optional), ("0", None));
    }

    #[test]
    fn other_json_values_are_refused_saying_what_an_id_is() {
        for bad in [
            r#"{"required": 4.2}"#,
            r#"{"required": 42.0}"#,
            r#"{"required": true}"#,
            r#"{"required": {"id": 1}}"#,
            r#"{"required": [1]}"#,
            r#"{"required": null}"#,
            r#"{"required": "u", "optional": false}"#,
            r#"{"required": "u", "optional": 1.5}"#,
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(ID_EXPECTED), "{bad}: {error}");
        }
    }

    #[test]
    fn values_are_described_for_error_messages() {
        let cases = [
            ("1.5", "a fractional number", None),
            ("true", "a boolean", None),
            ("{}", "an object", None),
            ("[]", "an array", None),
            ("null", "null", None),
            ("42", "an integer", Some("42")),
            ("\"x\"", "a string", Some("x")),
        ];
        for (json, kind, id) in cases {
            let value: Value = serde_json::from_str(json).expect("json");
            assert_eq!(describe(&value), kind);
            assert_eq!(from_value(&value).as_deref(), id);
        }
    }
}
