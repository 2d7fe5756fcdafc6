//! Properties of the wire formats over generated input: what a producer or a browser sends
//! is parsed exactly as a model of the contract says, and anything else is refused with a
//! reason that names what is wrong, never a panic.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::error::Error;

/// One field of a generated queue message: left out, or a JSON value of some kind.
#[derive(Debug, Clone)]
enum Field {
    Absent,
    Json(Value),
}

impl Field {
    fn value(&self) -> Option<&Value> {
        match self {
            Field::Absent => None,
            Field::Json(v) => Some(v),
        }
    }
}

/// Strings an id may or may not be: ordinary, empty, with a control character, at and
/// over the length bound, and non-ASCII.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        Just(String::new()),
        Just("line\nbreak".to_owned()),
        Just("x".repeat(MAX_ID_LEN)),
        Just("x".repeat(MAX_ID_LEN + 1)),
        "\\PC{1,6}",
    ]
}

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f + 0.5)),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field that is most often an id (string or integer) and sometimes anything else.
fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        3 => Just(Field::Absent),
        4 => id_text().prop_map(|s| Field::Json(Value::String(s))),
        2 => any::<i64>().prop_map(|n| Field::Json(json!(n))),
        1 => Just(Field::Json(Value::Null)),
        1 => any_json().prop_map(Field::Json),
    ]
}

const FIELDS: [&str; 8] = [
    "user_id",
    "room_id",
    "to_user_id",
    "connection_id",
    "exclude_connection_id",
    "id",
    "data",
    "published_at",
];

/// What the contract says of one id field: `Ok(Some(id))`, `Ok(None)` (absent or, where
/// optional, null) or `Err(())` (refused).
fn model_id(value: Option<&Value>, integers: bool, optional: bool) -> Result<Option<String>, ()> {
    let text = match value {
        None | Some(Value::Null) if optional => return Ok(None),
        None | Some(Value::Null) => return Err(()),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if integers && (n.is_i64() || n.is_u64()) => n.to_string(),
        Some(_) => return Err(()),
    };
    let valid = !text.is_empty() && text.len() <= MAX_ID_LEN && !text.chars().any(char::is_control);
    if valid { Ok(Some(text)) } else { Err(()) }
}

/// The fields of a valid message as the model reads them, or `None` for a refused one.
fn model(fields: &[Field], limit: usize) -> Option<Vec<Option<String>>> {
    let v = |i: usize| fields[i].value();
    let ids = [
        model_id(v(0), true, false),
        model_id(v(1), true, true),
        model_id(v(2), true, true),
        model_id(v(3), false, true),
        model_id(v(4), false, true),
        model_id(v(5), false, true),
    ];
    let ids: Vec<Option<String>> = ids.into_iter().collect::<Result<_, ()>>().ok()?;
    let data = v(6)?;
    if serde_json::to_string(data).ok()?.len() > limit {
        return None;
    }
    match v(7) {
        None | Some(Value::Null) => {}
        Some(n) if n.is_u64() => {}
        Some(_) => return None,
    }
    // A target: a room, a user or a connection.
    if ids[1].is_none() && ids[2].is_none() && ids[3].is_none() {
        return None;
    }
    Some(ids)
}

/// Whether a refusal says what is wrong: a field by name, or that the body is not JSON or
/// not an object — not serde's bare wording.
fn names_the_problem(reason: &str) -> bool {
    !reason.starts_with("invalid message:")
        && (reason.contains('`') || reason.contains("not valid JSON") || reason.contains("object"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_queue_message_is_accepted_exactly_when_the_contract_allows_it(
        fields in prop::collection::vec(field(), FIELDS.len()),
        limit in prop_oneof![Just(crate::config::DEFAULT_MAX_MESSAGE_BYTES), 0usize..16],
    ) {
        let mut object = serde_json::Map::new();
        for (name, f) in FIELDS.iter().zip(&fields) {
            if let Some(v) = f.value() {
                object.insert((*name).to_owned(), v.clone());
            }
        }
        let body = serde_json::to_vec(&Value::Object(object)).expect("a JSON object");
        let parsed = PublishMessage::parse(&body, limit);
        match (model(&fields, limit), parsed) {
            (Some(ids), Ok(m)) => {
                prop_assert_eq!(Some(m.user_id.clone()), ids[0].clone());
                prop_assert_eq!(m.room_id, ids[1].clone());
                prop_assert_eq!(m.to_user_id, ids[2].clone());
                prop_assert_eq!(m.connection_id, ids[3].clone());
                prop_assert_eq!(m.exclude_connection_id, ids[4].clone());
                prop_assert_eq!(m.id, ids[5].clone());
                // `data` is copied as it came, byte for byte.
                let sent = serde_json::to_string(fields[6].value().expect("data")).expect("JSON");
                prop_assert_eq!(m.data.get(), sent.as_str());
            }
            (None, Err(Error::Invalid(reason))) => {
                prop_assert!(names_the_problem(&reason), "unclear refusal: {}", reason);
            }
            (None, Err(Error::TooLarge { field, size, limit: l })) => {
                prop_assert_eq!(field, "data");
                prop_assert!(size > l);
            }
            (expected, got) => {
                prop_assert!(false, "model {:?} but parse gave {:?} for {}", expected, got,
                    String::from_utf8_lossy(&body));
            }
        }
    }

    #[test]
    fn any_bytes_as_a_queue_message_are_refused_with_a_reason_never_a_panic(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "\\PC{0,40}".prop_map(String::into_bytes),
            any_json().prop_map(|v| serde_json::to_vec(&v).expect("JSON")),
        ],
    ) {
        match PublishMessage::parse(&body, 1024) {
            Ok(m) => prop_assert!(m.validate(1024).is_ok()),
            Err(Error::Invalid(reason)) => {
                prop_assert!(names_the_problem(&reason), "unclear refusal: {}", reason);
            }
            Err(Error::TooLarge { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {:?}", other),
        }
    }

    #[test]
    fn a_browser_frame_is_an_action_or_a_refusal_with_a_known_code(
        text in prop_oneof![
            "\\PC{0,40}",
            any_json().prop_map(|v| v.to_string()),
            (prop_oneof![
                Just(json!("sendMessage")),
                Just(json!("ping")),
                any_json(),
            ], prop::option::of(any_json()))
                .prop_map(|(action, data)| {
                    let mut o = json!({ "action": action });
                    if let Some(data) = data {
                        o["data"] = data;
                    }
                    o.to_string()
                }),
        ],
    ) {
        let envelope: Option<serde_json::Map<String, Value>> = serde_json::from_str(&text).ok();
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Ping) => {
                let envelope = envelope.expect("a ping is a JSON object");
                prop_assert_eq!(envelope.get("action"), Some(&json!("ping")));
            }
            Ok(ClientFrame::SendMessage { data }) => {
                let envelope = envelope.expect("a sendMessage is a JSON object");
                prop_assert_eq!(envelope.get("action"), Some(&json!("sendMessage")));
                let data: Value = serde_json::from_str(data.get()).expect("data is JSON");
                prop_assert_eq!(Some(&data), envelope.get("data"));
            }
            Err(e) => {
                prop_assert!(
                    ["malformed_json", "not_an_object", "missing_action", "missing_data",
                        "unknown_action"].contains(&e.code),
                    "unknown code {}", e.code
                );
                prop_assert!(!e.message.is_empty());
                // A well-formed sendMessage or ping is never refused.
                if let Some(envelope) = &envelope {
                    let action = envelope.get("action");
                    prop_assert!(action != Some(&json!("ping")), "ping refused: {:?}", e);
                    prop_assert!(
                        !(action == Some(&json!("sendMessage")) && envelope.contains_key("data")),
                        "sendMessage with data refused: {:?}", e
                    );
                }
            }
        }
    }
}
