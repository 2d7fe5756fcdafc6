//! The queue message (a RabbitMQ or SQS body, or the body of `POST /v1/publish`) and the
//! routing outcome `POST /v1/publish` answers with.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Frame, Target, check_id};
use crate::error::{Error, Result};

/// Why a message without a room is refused.
const ROOM_REQUIRED: &str =
    "field `room_id` is required (it may be left out only with `to_user_id` or `connection_id`)";

/// A message to push: the body of a queue message or of `POST /v1/publish`.
///
/// The original format is `{"user_id", "room_id", "data"}`; the optional fields select a
/// narrower target. `data` is kept as raw JSON: it is copied, never re-encoded. The ids
/// `user_id`, `room_id` and `to_user_id` may be JSON integers (the original's Ruby code
/// sends `current_user.id`): they are read as their decimal strings ([`super::id`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishMessage {
    /// The sender, shown to browsers as `user_id`.
    #[serde(deserialize_with = "super::id::deserialize")]
    pub user_id: String,
    /// The room (tenant, channel) the message belongs to. It may be left out when the
    /// message names `to_user_id` (then it reaches that user's sockets in every room) or
    /// `connection_id`.
    #[serde(
        default,
        deserialize_with = "super::id::deserialize_optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub room_id: Option<String>,
    /// The payload, any JSON value.
    pub data: Box<RawValue>,
    /// Only this user's sockets: in `room_id`, or in every room when there is none.
    #[serde(
        default,
        deserialize_with = "super::id::deserialize_optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub to_user_id: Option<String>,
    /// Only this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// Every target but this connection (typically the sender's own socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_connection_id: Option<String>,
    /// A message id; gateways drop a second delivery of the same id within a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When the producer published it, milliseconds since the epoch (end-to-end latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
}

impl PublishMessage {
    /// Parses and validates a message (`data` at most `max_data_bytes`, see
    /// [`Self::validate`]). The error names the offending field.
    pub fn parse(body: &[u8], max_data_bytes: usize) -> Result<Self> {
        let msg: Self = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => return Err(Error::Invalid(describe_parse_error(body, &e))),
        };
        msg.validate(max_data_bytes)?;
        Ok(msg)
    }

    /// Checks field contents, and that `data`, measured as its JSON text (what browsers
    /// receive, copied as it came), is at most `max_data_bytes` long
    /// ([`Error::TooLarge`] otherwise: `HERMES_MAX_MESSAGE_BYTES`).
    pub fn validate(&self, max_data_bytes: usize) -> Result<()> {
        check_id("user_id", &self.user_id)?;
        if self.room_id.is_none() && self.to_user_id.is_none() && self.connection_id.is_none() {
            return Err(Error::Invalid(ROOM_REQUIRED.into()));
        }
        for (name, value) in [
            ("room_id", &self.room_id),
            ("to_user_id", &self.to_user_id),
            ("connection_id", &self.connection_id),
            ("exclude_connection_id", &self.exclude_connection_id),
            ("id", &self.id),
        ] {
            if let Some(v) = value {
                check_id(name, v)?;
            }
        }
        let size = self.data.get().len();
        if size > max_data_bytes {
            return Err(Error::TooLarge {
                field: "data",
                size,
                limit: max_data_bytes,
            });
        }
        Ok(())
    }

    /// The target this message selects: a connection, else a user (in the room, or in
    /// every room without one), else the room. A message [`Self::validate`] refuses (no
    /// room and no narrower target) selects no socket.
    pub fn target(&self) -> Target {
        if let Some(connection_id) = &self.connection_id {
            Target::Connections(vec![connection_id.clone()])
        } else if let Some(user_id) = &self.to_user_id {
            Target::User {
                user_id: user_id.clone(),
                room_id: self.room_id.clone(),
            }
        } else if let Some(room_id) = &self.room_id {
            Target::Room {
                room_id: room_id.clone(),
            }
        } else {
            Target::Connections(Vec::new())
        }
    }

    /// The frame browsers receive: `{"user_id": sender, "data": data}`.
    pub fn frame(&self) -> Frame {
        Frame::notification(&self.user_id, &self.data)
    }
}

/// Turns a serde error into a message that names the field and what was expected.
fn describe_parse_error(body: &[u8], error: &serde_json::Error) -> String {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return format!("body is not valid JSON: {error}"),
    };
    let Some(object) = value.as_object() else {
        return "body must be a JSON object like {\"user_id\",\"room_id\",\"data\"}".into();
    };
    if !object.contains_key("user_id") {
        return "field `user_id` is required".into();
    }
    let narrower = ["to_user_id", "connection_id"]
        .iter()
        .any(|f| object.get(*f).is_some_and(|v| !v.is_null()));
    if object.get("room_id").is_none_or(serde_json::Value::is_null) && !narrower {
        return ROOM_REQUIRED.into();
    }
    if !object.contains_key("data") {
        return "field `data` is required".into();
    }
    // Ids: a string, or an integer (read as its decimal string).
    for field in ["user_id", "room_id", "to_user_id"] {
        let optional = field != "user_id";
        if let Some(v) = object.get(field)
            && super::id::from_value(v).is_none()
            && !(optional && v.is_null())
        {
            return format!(
                "field `{field}` must be {}, not {}",
                super::id::ID_EXPECTED,
                super::id::describe(v)
            );
        }
    }
    for field in ["connection_id", "exclude_connection_id", "id"] {
        if let Some(v) = object.get(field)
            && !v.is_string()
            && !v.is_null()
        {
            return format!("field `{field}` must be a string");
        }
    }
    if let Some(v) = object.get("published_at")
        && !v.is_u64()
        && !v.is_null()
    {
        return "field `published_at` must be milliseconds since the epoch".into();
    }
    format!("invalid message: {error}")
}

/// The routing outcome of one message (`POST /v1/publish` answers it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOutcome {
    pub id: String,
    /// Sockets the message was queued to.
    pub delivered: usize,
    /// Connections found gone (and removed from the registry).
    pub gone: usize,
    /// Gateways that held targets and answered.
    pub gateways: usize,
    /// The gateways that are done with this message: they delivered it to at least one
    /// socket (or had already), or are gone with their connections. A retry goes only to
    /// the others, so a gateway that answered but reached nobody is asked again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answered: Vec<String>,
    /// Gateways that held targets but could not be reached (transient).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Gateways that held targets but are shutting down (their pod is terminating: its
    /// sockets are being closed and reconnect elsewhere), so they were not sent to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Gateways that held targets and refused the delivery for good (400, 401, 403, 413:
    /// see `Error::rejected`): sending it again would be refused again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
}

/// A gateway's refusal of a delivery, for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub gateway_id: String,
    /// The HTTP status it answered (the request's or the deliver stream's upgrade).
    pub status: u16,
    /// What it said.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_MESSAGE_BYTES as MAX;

    #[test]
    fn original_message_parses_and_targets_the_room() {
        let m = PublishMessage::parse(
            br#"{"user_id":"u1","room_id":"r1","data":{"type":"x","n":1}}"#,
            MAX,
        )
        .expect("valid");
        assert_eq!(
            m.target(),
            Target::Room {
                room_id: "r1".into()
            }
        );
        assert_eq!(
            m.frame().as_str(),
            r#"{"user_id":"u1","data":{"type":"x","n":1}}"#
        );
    }

    #[test]
    fn connection_beats_user_beats_room() {
        let m = PublishMessage::parse(
            br#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v","connection_id":"c"}"#,
            MAX,
        )
        .expect("valid");
        assert_eq!(m.target(), Target::Connections(vec!["c".into()]));
        let m = PublishMessage::parse(
            br#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#,
            MAX,
        )
        .expect("valid");
        assert_eq!(
            m.target(),
            Target::User {
                user_id: "v".into(),
                room_id: Some("r".into())
            }
        );
    }

    #[test]
    fn a_user_without_a_room_is_that_user_in_every_room() {
        let m = PublishMessage::parse(br#"{"user_id":"u","to_user_id":42,"data":1}"#, MAX)
            .expect("valid");
        assert_eq!(
            m.target(),
            Target::User {
                user_id: "42".into(),
                room_id: None
            }
        );
        // A retry copy (its own serialization) keeps the target, with no `room_id` key.
        let text = serde_json::to_string(&m).expect("json");
        assert!(!text.contains("room_id"), "{text}");
        let again = PublishMessage::parse(text.as_bytes(), MAX).expect("valid");
        assert_eq!(again.target(), m.target());
        // A connection needs no room either; a null room is no room.
        let m = PublishMessage::parse(
            br#"{"user_id":"u","room_id":null,"connection_id":"c","data":1}"#,
            MAX,
        )
        .expect("valid");
        assert_eq!(m.target(), Target::Connections(vec!["c".into()]));
        let err = PublishMessage::parse(br#"{"user_id":"u","room_id":null,"data":1}"#, MAX)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`room_id` is required"), "{err}");
    }

    #[test]
    fn invalid_messages_name_the_field() {
        let cases: [(&[u8], &str); 9] = [
            (b"not json", "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"user_id":"u","data":1}"#, "`room_id` is required"),
            (br#"{"user_id":"u","room_id":"r"}"#, "`data` is required"),
            (
                br#"{"user_id":5.5,"room_id":"r","data":1}"#,
                "`user_id` must be a string or an integer, not a fractional number",
            ),
            (
                br#"{"user_id":"u","room_id":"","data":1}"#,
                "`room_id` must not be empty",
            ),
            (
                br#"{"user_id":"u","room_id":"r","data":1,"to_user_id":true}"#,
                "`to_user_id` must be a string or an integer, not a boolean",
            ),
            (
                br#"{"user_id":"u","room_id":{"id":7},"data":1}"#,
                "`room_id` must be a string or an integer, not an object",
            ),
            (
                br#"{"user_id":"u","room_id":"r","data":1,"connection_id":7}"#,
                "`connection_id` must be a string",
            ),
        ];
        for (body, expected) in cases {
            let err = PublishMessage::parse(body, MAX)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn integer_ids_are_read_as_their_decimal_strings() {
        // As the original Ruby backend publishes: `current_user.id` is an Integer.
        let m = PublishMessage::parse(
            br#"{"user_id":42,"room_id":7,"to_user_id":43,"data":{"type":"x"}}"#,
            MAX,
        )
        .expect("valid");
        assert_eq!(
            (m.user_id.as_str(), m.room_id.as_deref()),
            ("42", Some("7"))
        );
        assert_eq!(
            m.target(),
            Target::User {
                user_id: "43".into(),
                room_id: Some("7".into())
            }
        );
        assert_eq!(
            m.frame().as_str(),
            r#"{"user_id":"42","data":{"type":"x"}}"#
        );
        // Read again from its own serialization (a retry copy), it is the same message.
        let again =
            PublishMessage::parse(&serde_json::to_vec(&m).expect("json"), MAX).expect("valid");
        assert_eq!(again.target(), m.target());
        assert_eq!(again.frame().as_str(), m.frame().as_str());
    }

    /// A message whose `data` is a JSON string of `len` bytes in all (quotes included).
    fn with_data_of(len: usize) -> Vec<u8> {
        let text = "x".repeat(len - 2);
        format!(r#"{{"user_id":"u","room_id":"r","data":"{text}"}}"#).into_bytes()
    }

    #[test]
    fn data_at_the_limit_is_accepted_and_one_byte_more_is_too_large() {
        let limit = 1000;
        let m = PublishMessage::parse(&with_data_of(limit), limit).expect("at the limit");
        assert_eq!(m.data.get().len(), limit);
        match PublishMessage::parse(&with_data_of(limit + 1), limit) {
            Err(e @ Error::TooLarge { .. }) => {
                assert_eq!(e.metric_label(), "too_large");
                assert!(!e.is_transient());
                assert_eq!(
                    e.to_string(),
                    "field `data` is 1001 bytes, more than the limit of 1000 bytes"
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn the_size_of_data_is_its_json_text_as_it_came() {
        // Six bytes of JSON text, whitespace and escapes included: the bytes browsers get.
        let body = br#"{"user_id":"u","room_id":"r","data":[1, 2]}"#;
        assert!(PublishMessage::parse(body, 6).is_ok());
        assert!(matches!(
            PublishMessage::parse(body, 5),
            Err(Error::TooLarge { size: 6, .. })
        ));
        // The other fields do not count.
        let body = br#"{"user_id":"a-rather-long-user-id","room_id":"r","data":1}"#;
        assert!(PublishMessage::parse(body, 1).is_ok());
    }
}
