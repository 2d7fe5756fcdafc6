//! WebSocket close codes Hermes uses, and what a client should do on each.
//!
//! | code | meaning | client |
//! |---|---|---|
//! | 1000 | normal | do not reconnect unless it wants to |
//! | 1001 | going away (idle timeout, dead peer) | reconnect with backoff |
//! | 1002 / 1007 / 1009 | protocol error / invalid UTF-8 / message too big | fix the client; backoff |
//! | 1008 | policy violation (message rate) | reconnect with backoff |
//! | 1011 | internal error | reconnect with backoff |
//! | 1012 | service restart (the gateway is draining) | reconnect soon, with jitter |
//! | 1013 | try again later (the client read too slowly) | reconnect with backoff |
//! | 4001 | the token expired | reconnect with a new token (hermes.js asks its token function) |
//! | 4000–4099 | do not reconnect (4003 token revoked, 4004 disconnected by the admin API) | stop |

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;
pub const SERVICE_RESTART: u16 = 1012;
pub const TRY_AGAIN_LATER: u16 = 1013;
pub const TOKEN_EXPIRED: u16 = 4001;
pub const TOKEN_REVOKED: u16 = 4003;
pub const DISCONNECTED: u16 = 4004;

/// The `code` label of `hermes_socket_closes_total` for a close with `code`: the code itself
/// when it is one of RFC 6455's registered codes or one of Hermes's, `other` for any
/// other. A client chooses the code it closes with, so the label's values must be a fixed
/// set: a client sending arbitrary codes cannot create new series.
pub fn metric_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1010 => "1010",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        1014 => "1014",
        TOKEN_EXPIRED => "4001",
        TOKEN_REVOKED => "4003",
        DISCONNECTED => "4004",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_outside_the_known_set_are_labelled_other() {
        for code in [
            NORMAL,
            GOING_AWAY,
            PROTOCOL_ERROR,
            UNSUPPORTED_DATA,
            INVALID_PAYLOAD,
            POLICY_VIOLATION,
            MESSAGE_TOO_BIG,
            INTERNAL_ERROR,
            SERVICE_RESTART,
            TRY_AGAIN_LATER,
            TOKEN_EXPIRED,
            TOKEN_REVOKED,
            DISCONNECTED,
            1005,
            1006,
        ] {
            assert_eq!(metric_label(code), code.to_string());
        }
        for code in [
            0, 999, 1004, 1015, 1016, 2999, 3000, 3999, 4000, 4002, 4999, 65535,
        ] {
            assert_eq!(metric_label(code), "other", "{code}");
        }
    }
}
