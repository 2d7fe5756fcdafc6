//! Wire types, one file per interface: the queue message and the publish answer
//! (`queue`), what browsers receive and send (`browser`), and the internal API between
//! routers and gateways (`internal`: paths, secret header, deliver request and answer,
//! deliver stream frames and subprotocol, connection details), and how ids are read
//! (`id`: a string, or an integer read as its decimal string).
//!
//! Browsers receive exactly `{"user_id": <sender>, "data": <data>}`, the original format.
//! That text is serialized once per message ([`Frame`]) and shared by every socket and
//! every gateway that receives it.

mod browser;
pub mod id;
mod internal;
#[cfg(test)]
mod properties;
mod queue;

pub use browser::{
    ClientFrame, ClientFrameError, ErrorBody, Frame, ServerFrame, connected_frame, error_frame,
    notification_v1, pong_frame, recovered_frame,
};
pub use internal::{
    CONNECTIONS_PATH, ConnectionInfo, DELIVER_BATCH_MAX, DELIVER_BATCH_PATH, DELIVER_PATH,
    DELIVER_STREAM_PATH, DELIVER_STREAM_PROTOCOL, DeliverAction, DeliverBatch, DeliverBatchReply,
    DeliverRequest, DeliverResponse, Identity, REGISTRY_PATH, SECRET_HEADER, Target,
    rfc3339_millis,
};
pub use queue::{PublishMessage, Rejection, RouteOutcome};

use crate::error::{Error, Result};

/// Longest accepted id (user, room, connection, message).
pub const MAX_ID_LEN: usize = 256;

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
