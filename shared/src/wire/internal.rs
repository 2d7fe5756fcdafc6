//! The internal API between routers and gateways (internal listener only, never behind the
//! ingress): its paths, the shared-secret header, the deliver request and answer (the same
//! over `POST /internal/v1/deliver`, `/deliver-batch` and the deliver stream), the deliver
//! stream's frames and subprotocol, and the connection details a gateway answers with.

use serde::{Deserialize, Serialize};

use super::Frame;

/// The header that carries `HERMES_INTERNAL_SECRET` on every internal call.
pub const SECRET_HEADER: &str = "x-hermes-internal-secret";

/// `POST`: one [`DeliverRequest`], answered with one [`DeliverResponse`].
pub const DELIVER_PATH: &str = "/internal/v1/deliver";

/// `POST`: a JSON array of at most [`DELIVER_BATCH_MAX`] [`DeliverRequest`]s, answered with
/// one [`DeliverResponse`] per request, in order.
pub const DELIVER_BATCH_PATH: &str = "/internal/v1/deliver-batch";

/// Requests in one deliver batch at most (`/deliver-batch` or one deliver stream frame).
pub const DELIVER_BATCH_MAX: usize = 32;

/// `GET`: the deliver stream, a WebSocket of [`DeliverBatch`] frames answered by
/// [`DeliverBatchReply`] frames, subprotocol [`DELIVER_STREAM_PROTOCOL`].
pub const DELIVER_STREAM_PATH: &str = "/internal/v1/deliver-stream";

/// The subprotocol of the deliver stream; a later, incompatible protocol gets a new name.
pub const DELIVER_STREAM_PROTOCOL: &str = "hermes.deliver.v1";

/// `GET {CONNECTIONS_PATH}/{id}`: one local connection's [`ConnectionInfo`]; 404 when this
/// gateway does not hold it.
pub const CONNECTIONS_PATH: &str = "/internal/v1/connections";

/// `POST`: one operation on the registry this process serves (`crate::registry::remote`).
pub const REGISTRY_PATH: &str = "/internal/v1/registry";

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

/// What a gateway does with the target sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeliverAction {
    /// Send a text frame. A notification (a message with an id): `hermes.v1` sockets get
    /// it with its `id` and `pos` added; `raw` (API Gateway's `POST @connections`): every
    /// socket gets the text as it is.
    Send {
        frame: Frame,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        raw: bool,
    },
    /// Close the sockets with this code and reason.
    Close { code: u16, reason: String },
    /// The (user, room) token was revoked: forget cached verdicts, close with 4003.
    Revoke { user_id: String, room_id: String },
    /// The (user, room) token was replaced: forget cached verdicts of the old one.
    Forget { user_id: String, room_id: String },
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
    /// The notification's position in its stream's history (`crate::history::Pos` text),
    /// when it was recorded: `hermes.v1` sockets receive it as `pos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<String>,
    /// When this delivery expires, ms since the epoch: a gateway that receives it later
    /// (plus `history::CLOCK_ALLOWANCE`) drops it, since the router has counted it failed
    /// and a retry records it anew (see `crate::history::Timing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
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
                raw: false,
                frame: Frame::from_text("{\"a\":\"\\\"\"}"),
            },
            pos: None,
            expires_at: None,
        };
        let text = serde_json::to_string(&req).expect("serializes");
        let back: DeliverRequest = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.target, req.target);
        assert!(
            matches!(back.action, DeliverAction::Send { frame, .. } if frame.as_str() == "{\"a\":\"\\\"\"}")
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
