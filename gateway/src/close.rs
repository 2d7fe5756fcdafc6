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
