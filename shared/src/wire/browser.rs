//! What browsers receive and send: the notification frame `{"user_id", "data"}` (the
//! original format, serialized once per message and shared), the frames the server sends
//! on its own behalf, and the client frames it accepts.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// After a resuming socket's replay: whether it is up to date, and how many
    /// notifications came after its position.
    Recovered {
        event: &'static str,
        recovered: bool,
        missed: usize,
    },
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

/// Builds the frame that ends a resuming socket's replay.
pub fn recovered_frame(recovered: bool, missed: usize) -> Frame {
    ServerFrame::Recovered {
        event: "recovered",
        recovered,
        missed,
    }
    .to_frame()
}

/// A notification as `hermes.v1` sockets receive it: the original frame
/// (`{"user_id","data"}`) with `"id"` and, when it was recorded in history, `"pos"` added
/// at its end. `None` when `frame` is not a JSON object's text.
pub fn notification_v1(frame: &str, id: &str, pos: Option<&str>) -> Option<String> {
    let body = frame.trim_end().strip_suffix('}')?;
    let id = serde_json::to_string(id).ok()?;
    let mut text = String::with_capacity(frame.len() + id.len() + 40);
    text.push_str(body);
    if !body.trim_end().ends_with('{') {
        text.push(',');
    }
    text.push_str("\"id\":");
    text.push_str(&id);
    if let Some(pos) = pos {
        // Positions are hex: nothing to escape.
        text.push_str(",\"pos\":\"");
        text.push_str(pos);
        text.push('"');
    }
    text.push('}');
    Some(text)
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
            // Present, `null` included, is `Some`: `"data": null` is a payload like any
            // other, as publishing takes it.
            #[serde(default, deserialize_with = "present")]
            data: Option<Box<RawValue>>,
        }
        fn present<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<Option<Box<RawValue>>, D::Error> {
            Box::<RawValue>::deserialize(d).map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // `null` is a payload, as publishing takes it.
        assert!(matches!(
            ClientFrame::parse(r#"{"action":"sendMessage","data":null}"#),
            Ok(ClientFrame::SendMessage { data }) if data.get() == "null"
        ));
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
        assert_eq!(
            recovered_frame(true, 3).as_str(),
            r#"{"event":"recovered","recovered":true,"missed":3}"#
        );
    }

    #[test]
    fn hermes_v1_notifications_carry_id_and_pos_after_the_original_fields() {
        let frame = r#"{"user_id":"u","data":{"type":"x"}}"#;
        let v1 = notification_v1(frame, "m-1", Some("00000000000000010000000a")).expect("object");
        assert_eq!(
            v1,
            r#"{"user_id":"u","data":{"type":"x"},"id":"m-1","pos":"00000000000000010000000a"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&v1).expect("valid JSON");
        assert_eq!(parsed["data"]["type"], "x");
        assert_eq!(
            notification_v1(frame, "q\"uote", None).as_deref(),
            Some(r#"{"user_id":"u","data":{"type":"x"},"id":"q\"uote"}"#)
        );
        assert_eq!(
            notification_v1("{}", "i", None).as_deref(),
            Some(r#"{"id":"i"}"#)
        );
        assert_eq!(notification_v1("[1]", "i", None), None);
    }
}
