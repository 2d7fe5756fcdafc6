//! Wire types: queue/publish messages, browser frames, the internal deliver API.
//!
//! Browsers receive exactly `{"user_id": <sender>, "data": <data>}`, the original format.
//! That text is serialized once per message ([`Frame`]) and shared by every socket and
//! every gateway that receives it.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// Longest accepted id (user, room, connection, message).
pub const MAX_ID_LEN: usize = 256;

/// A message to push: the body of a queue message or of `POST /v1/publish`.
///
/// The original format is `{"user_id", "room_id", "data"}`; the optional fields select a
/// narrower target. `data` is kept as raw JSON: it is copied, never re-encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishMessage {
    /// The sender, shown to browsers as `user_id`.
    pub user_id: String,
    /// The room (tenant, channel) the message belongs to.
    pub room_id: String,
    /// The payload, any JSON value.
    pub data: Box<RawValue>,
    /// Only this user's sockets in `room_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Parses and validates a message. The error names the offending field.
    pub fn parse(body: &[u8]) -> Result<Self> {
        let msg: Self = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => return Err(Error::Invalid(describe_parse_error(body, &e))),
        };
        msg.validate()?;
        Ok(msg)
    }

    /// Checks field contents.
    pub fn validate(&self) -> Result<()> {
        check_id("user_id", &self.user_id)?;
        check_id("room_id", &self.room_id)?;
        for (name, value) in [
            ("to_user_id", &self.to_user_id),
            ("connection_id", &self.connection_id),
            ("exclude_connection_id", &self.exclude_connection_id),
            ("id", &self.id),
        ] {
            if let Some(v) = value {
                check_id(name, v)?;
            }
        }
        Ok(())
    }

    /// The target this message selects: a connection, else a user in the room, else the room.
    pub fn target(&self) -> Target {
        if let Some(connection_id) = &self.connection_id {
            Target::Connections(vec![connection_id.clone()])
        } else if let Some(user_id) = &self.to_user_id {
            Target::User {
                user_id: user_id.clone(),
                room_id: Some(self.room_id.clone()),
            }
        } else {
            Target::Room {
                room_id: self.room_id.clone(),
            }
        }
    }

    /// The frame browsers receive: `{"user_id": sender, "data": data}`.
    pub fn frame(&self) -> Frame {
        Frame::notification(&self.user_id, &self.data)
    }
}

/// Checks that an id is non-empty, bounded and free of control characters.
pub fn check_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::Invalid(format!("field `{field}` must not be empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::Invalid(format!(
            "field `{field}` is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "field `{field}` contains control characters"
        )));
    }
    Ok(())
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
    for field in ["user_id", "room_id", "data"] {
        if !object.contains_key(field) {
            return format!("field `{field}` is required");
        }
    }
    for field in [
        "user_id",
        "room_id",
        "to_user_id",
        "connection_id",
        "exclude_connection_id",
        "id",
    ] {
        let optional = !matches!(field, "user_id" | "room_id");
        if let Some(v) = object.get(field)
            && !v.is_string()
            && !(optional && v.is_null())
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

/// What a message is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every socket in a room.
    Room { room_id: String },
    /// Every socket of a user, optionally only those in one room.
    User {
        user_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
    },
    /// Specific connections.
    Connections(Vec<String>),
}

/// A text frame for browsers, serialized once and shared (cheap to clone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(ByteString);

impl Frame {
    /// `{"user_id": sender, "data": data}`.
    pub fn notification(user_id: &str, data: &RawValue) -> Self {
        #[derive(Serialize)]
        struct Notification<'a> {
            user_id: &'a str,
            data: &'a RawValue,
        }
        let text = serde_json::to_string(&Notification { user_id, data })
            .unwrap_or_else(|_| String::from("{}"));
        Self(ByteString::from(text))
    }

    /// A frame from text that is already what browsers should receive.
    pub fn from_text(text: impl Into<ByteString>) -> Self {
        Self(text.into())
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for the socket writer.
    pub fn text(&self) -> ByteString {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Frame {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self(ByteString::from(s)))
    }
}

/// A frame the server sends on its own behalf (not a notification).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ServerFrame<'a> {
    /// First frame for `hermes.v1` clients.
    Connected {
        event: &'static str,
        connection_id: &'a str,
        user_id: &'a str,
        room_id: &'a str,
    },
    /// Answer to `{"action":"ping"}`.
    Pong { event: &'static str },
    /// A refused client frame; the socket stays open.
    Error { error: ErrorBody<'a> },
}

/// `{"code", "message"}` inside an error frame or an HTTP error body.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl ServerFrame<'_> {
    /// The frame's JSON text.
    pub fn to_frame(&self) -> Frame {
        Frame(ByteString::from(
            serde_json::to_string(self).unwrap_or_else(|_| String::from("{}")),
        ))
    }
}

/// Builds the first frame for `hermes.v1` clients.
pub fn connected_frame(connection_id: &str, user_id: &str, room_id: &str) -> Frame {
    ServerFrame::Connected {
        event: "connected",
        connection_id,
        user_id,
        room_id,
    }
    .to_frame()
}

/// Builds the answer to a client ping.
pub fn pong_frame() -> Frame {
    ServerFrame::Pong { event: "pong" }.to_frame()
}

/// Builds an error frame.
pub fn error_frame(code: &str, message: &str) -> Frame {
    ServerFrame::Error {
        error: ErrorBody { code, message },
    }
    .to_frame()
}

/// A frame from a browser, after validation.
#[derive(Debug)]
pub enum ClientFrame {
    /// `{"action":"sendMessage","data":...}`: broadcast to the sender's room.
    SendMessage { data: Box<RawValue> },
    /// `{"action":"ping"}`.
    Ping,
}

/// Why a client frame was refused: a code for the error frame and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrameError {
    pub code: &'static str,
    pub message: String,
}

impl ClientFrame {
    /// Parses a text frame.
    pub fn parse(text: &str) -> std::result::Result<Self, ClientFrameError> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow, default)]
            action: Option<&'a RawValue>,
            #[serde(default)]
            data: Option<Box<RawValue>>,
        }
        let malformed = |e: serde_json::Error| ClientFrameError {
            code: "malformed_json",
            message: format!("the frame is not valid JSON: {e}"),
        };
        // One parse on the usual path; only a frame that is not an object is parsed a
        // second time, to tell bad JSON from valid JSON of the wrong shape.
        if !text.trim_start().starts_with('{') {
            serde_json::from_str::<&RawValue>(text).map_err(malformed)?;
            return Err(ClientFrameError {
                code: "not_an_object",
                message:
                    "frames must be JSON objects like {\"action\":\"sendMessage\",\"data\":...}"
                        .into(),
            });
        }
        let envelope: Envelope<'_> = serde_json::from_str(text).map_err(malformed)?;
        let action = envelope
            .action
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .ok_or_else(|| ClientFrameError {
                code: "missing_action",
                message: "the frame needs a string field `action` (sendMessage or ping)".into(),
            })?;
        match action.as_str() {
            "sendMessage" => match envelope.data {
                Some(data) => Ok(ClientFrame::SendMessage { data }),
                None => Err(ClientFrameError {
                    code: "missing_data",
                    message: "sendMessage needs a field `data`".into(),
                }),
            },
            "ping" => Ok(ClientFrame::Ping),
            other => Err(ClientFrameError {
                code: "unknown_action",
                message: format!(
                    "unknown action {:?}; known actions: sendMessage, ping",
                    truncate(other, 64)
                ),
            }),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What a gateway does with the target sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeliverAction {
    /// Send a text frame.
    Send { frame: Frame },
    /// Close the sockets with this code and reason.
    Close { code: u16, reason: String },
    /// The (user, room) token was revoked: forget cached verdicts, close with 4003.
    Revoke { user_id: String, room_id: String },
}

/// Body of `POST /internal/v1/deliver`: one target group and what to do with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverRequest {
    /// Message id, for de-duplication of redeliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_connection_id: Option<String>,
    /// Producer's publish time, milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
    pub action: DeliverAction,
}

/// One frame of the deliver stream (`GET /internal/v1/deliver-stream`): from the router, a
/// batch of deliver requests under a sequence number (`T` = `Vec<DeliverRequest>` or a
/// borrowed slice); from the gateway, the answers to that batch, one per request in order,
/// under the same number (`DeliverBatch<Vec<DeliverResponse>>`, field `responses`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverBatch<T> {
    pub seq: u64,
    pub requests: T,
}

/// The gateway's answer to one [`DeliverBatch`] on the deliver stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverBatchReply {
    pub seq: u64,
    pub responses: Vec<DeliverResponse>,
}

/// Answer of `POST /internal/v1/deliver`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverResponse {
    /// Sockets the frame was queued to (or closed, for close actions).
    pub delivered: usize,
    /// Targeted connection ids this gateway does not hold (the 410 path).
    #[serde(default)]
    pub gone: Vec<String>,
    /// True when the message id was seen before and nothing was sent again.
    #[serde(default)]
    pub duplicate: bool,
}

/// What `GET /@connections/{id}` returns (API Gateway's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    /// ISO-8601 time.
    pub connected_at: String,
    pub identity: Identity,
    /// ISO-8601 time.
    pub last_active_at: String,
}

/// The client identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub source_ip: String,
    pub user_agent: String,
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
    /// Gateways that held targets but could not be reached (transient).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Gateways that held targets but are shutting down (their pod is terminating: its
    /// sockets are being closed and reconnect elsewhere), so they were not sent to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Formats milliseconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_message_parses_and_targets_the_room() {
        let m =
            PublishMessage::parse(br#"{"user_id":"u1","room_id":"r1","data":{"type":"x","n":1}}"#)
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
        )
        .expect("valid");
        assert_eq!(m.target(), Target::Connections(vec!["c".into()]));
        let m =
            PublishMessage::parse(br#"{"user_id":"u","room_id":"r","data":1,"to_user_id":"v"}"#)
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
    fn invalid_messages_name_the_field() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"user_id":"u","data":1}"#, "`room_id` is required"),
            (br#"{"user_id":"u","room_id":"r"}"#, "`data` is required"),
            (
                br#"{"user_id":5,"room_id":"r","data":1}"#,
                "`user_id` must be a string",
            ),
            (
                br#"{"user_id":"u","room_id":"","data":1}"#,
                "`room_id` must not be empty",
            ),
            (
                br#"{"user_id":"u","room_id":"r","data":1,"to_user_id":7}"#,
                "`to_user_id` must be a string",
            ),
        ];
        for (body, expected) in cases {
            let err = PublishMessage::parse(body)
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
    fn client_frames_are_classified() {
        assert!(matches!(
            ClientFrame::parse(r#"{"action":"sendMessage","data":{"a":1}}"#),
            Ok(ClientFrame::SendMessage { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"action":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        let code = |t: &str| ClientFrame::parse(t).err().map(|e| e.code);
        assert_eq!(code("{"), Some("malformed_json"));
        assert_eq!(code("[1]"), Some("not_an_object"));
        assert_eq!(code("\"x\""), Some("not_an_object"));
        assert_eq!(code(r#"{"data":1}"#), Some("missing_action"));
        assert_eq!(code(r#"{"action":5}"#), Some("missing_action"));
        assert_eq!(code(r#"{"action":"fly"}"#), Some("unknown_action"));
        assert_eq!(code(r#"{"action":"sendMessage"}"#), Some("missing_data"));
    }

    #[test]
    fn server_frames_have_their_documented_shape() {
        assert_eq!(pong_frame().as_str(), r#"{"event":"pong"}"#);
        assert_eq!(
            error_frame("unknown_action", "m").as_str(),
            r#"{"error":{"code":"unknown_action","message":"m"}}"#
        );
        assert_eq!(
            connected_frame("c", "u", "r").as_str(),
            r#"{"event":"connected","connection_id":"c","user_id":"u","room_id":"r"}"#
        );
    }

    #[test]
    fn deliver_request_round_trips() {
        let req = DeliverRequest {
            id: Some("m1".into()),
            target: Target::User {
                user_id: "u".into(),
                room_id: None,
            },
            exclude_connection_id: None,
            published_at: Some(5),
            action: DeliverAction::Send {
                frame: Frame::from_text("{\"a\":\"\\\"\"}"),
            },
        };
        let text = serde_json::to_string(&req).expect("serializes");
        let back: DeliverRequest = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.target, req.target);
        assert!(
            matches!(back.action, DeliverAction::Send { frame } if frame.as_str() == "{\"a\":\"\\\"\"}")
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
    }
}
