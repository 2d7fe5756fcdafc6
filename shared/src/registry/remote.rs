//! A registry served by another Hermes process over its internal listener
//! (`POST /internal/v1/registry`, shared-secret header).
//!
//! It lets several gateway processes share the embedded in-memory registry of one
//! standalone process: a development cluster and the multi-process tests, without a
//! database. Production uses ScyllaDB. Each call is one request carrying a
//! [`RegistryOp`]; the answer is the operation's result as JSON.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    ConnectionRecord, GatewayKeys, GatewayRecord, Holdings, Reaped, Registry, TokenRecord,
};
use crate::error::{Error, Result};
use crate::history::{HistoryEntry, HistoryPage, Pos};
use crate::wire::{REGISTRY_PATH, SECRET_HEADER};

/// One registry call. TTLs travel in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RegistryOp {
    UpsertGateway {
        gateway: GatewayRecord,
        ttl_ms: u64,
    },
    RemoveGateway {
        gateway_id: String,
    },
    Gateway {
        gateway_id: String,
    },
    Gateways,
    PutConnection {
        connection: ConnectionRecord,
        ttl_ms: u64,
    },
    RemoveConnection {
        connection_id: String,
        /// The gateway the row names (its index entry goes with it).
        #[serde(default)]
        gateway_id: String,
    },
    Connection {
        connection_id: String,
    },
    AddRoomGateway {
        room_id: String,
        gateway_id: String,
        ttl_ms: u64,
    },
    RemoveRoomGateway {
        room_id: String,
        gateway_id: String,
    },
    RoomGateways {
        room_id: String,
    },
    AddUserGateway {
        user_id: String,
        gateway_id: String,
        ttl_ms: u64,
    },
    RemoveUserGateway {
        user_id: String,
        gateway_id: String,
    },
    UserGateways {
        user_id: String,
    },
    PutToken {
        token: TokenRecord,
    },
    Token {
        user_id: String,
        room_id: String,
    },
    SetFastVerifier {
        user_id: String,
        room_id: String,
        token_hash: String,
        verifier: String,
    },
    DeleteToken {
        user_id: String,
        room_id: String,
    },
    GatewayKeys {
        gateway_id: String,
    },
    ClearGatewayKeys {
        gateway_id: String,
    },
    /// Runs the whole reap in the serving process: one request instead of a few per row.
    ReapGateway {
        gateway_id: String,
    },
    AppendHistory {
        entry: HistoryEntry,
        ttl_ms: u64,
        keep: usize,
    },
    ReadHistory {
        stream: String,
        after: Pos,
        limit: usize,
    },
    Refresh {
        gateway: GatewayRecord,
        rooms: Vec<String>,
        users: Vec<String>,
        connections: Vec<ConnectionRecord>,
        /// The gateway row's TTL.
        ttl_ms: u64,
        /// The other rows' TTL.
        row_ttl_ms: u64,
    },
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn json<T: Serialize>(v: T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Invalid(e.to_string()))
}

/// Executes an operation against a local registry (the serving side).
pub async fn execute(registry: &dyn Registry, op: RegistryOp) -> Result<serde_json::Value> {
    use RegistryOp::*;
    let d = Duration::from_millis;
    match op {
        UpsertGateway { gateway, ttl_ms } => {
            json(registry.upsert_gateway(&gateway, d(ttl_ms)).await?)
        }
        RemoveGateway { gateway_id } => json(registry.remove_gateway(&gateway_id).await?),
        Gateway { gateway_id } => json(registry.gateway(&gateway_id).await?),
        Gateways => json(registry.gateways().await?),
        PutConnection { connection, ttl_ms } => {
            json(registry.put_connection(&connection, d(ttl_ms)).await?)
        }
        RemoveConnection {
            connection_id,
            gateway_id,
        } => json(
            registry
                .remove_connection(&connection_id, &gateway_id)
                .await?,
        ),
        Connection { connection_id } => json(registry.connection(&connection_id).await?),
        AddRoomGateway {
            room_id,
            gateway_id,
            ttl_ms,
        } => json(
            registry
                .add_room_gateway(&room_id, &gateway_id, d(ttl_ms))
                .await?,
        ),
        RemoveRoomGateway {
            room_id,
            gateway_id,
        } => json(registry.remove_room_gateway(&room_id, &gateway_id).await?),
        RoomGateways { room_id } => json(registry.room_gateways(&room_id).await?),
        AddUserGateway {
            user_id,
            gateway_id,
            ttl_ms,
        } => json(
            registry
                .add_user_gateway(&user_id, &gateway_id, d(ttl_ms))
                .await?,
        ),
        RemoveUserGateway {
            user_id,
            gateway_id,
        } => json(registry.remove_user_gateway(&user_id, &gateway_id).await?),
        UserGateways { user_id } => json(registry.user_gateways(&user_id).await?),
        PutToken { token } => json(registry.put_token(&token).await?),
        Token { user_id, room_id } => json(registry.token(&user_id, &room_id).await?),
        SetFastVerifier {
            user_id,
            room_id,
            token_hash,
            verifier,
        } => json(
            registry
                .set_fast_verifier(&user_id, &room_id, &token_hash, &verifier)
                .await?,
        ),
        DeleteToken { user_id, room_id } => json(registry.delete_token(&user_id, &room_id).await?),
        RegistryOp::GatewayKeys { gateway_id } => json(registry.gateway_keys(&gateway_id).await?),
        ClearGatewayKeys { gateway_id } => json(registry.clear_gateway_keys(&gateway_id).await?),
        ReapGateway { gateway_id } => json(registry.reap_gateway(&gateway_id).await?),
        AppendHistory {
            entry,
            ttl_ms,
            keep,
        } => json(registry.append_history(&entry, d(ttl_ms), keep).await?),
        ReadHistory {
            stream,
            after,
            limit,
        } => json(registry.read_history(&stream, after, limit).await?),
        Refresh {
            gateway,
            rooms,
            users,
            connections,
            ttl_ms,
            row_ttl_ms,
        } => {
            let rows = Holdings {
                rooms,
                users,
                connections,
            };
            json(
                registry
                    .refresh(&gateway, d(ttl_ms), &rows, d(row_ttl_ms))
                    .await?,
            )
        }
    }
}

/// The client side: a [`Registry`] whose calls go to another process.
pub struct RemoteRegistry {
    http: reqwest::Client,
    endpoint: String,
    secret: String,
}

impl RemoteRegistry {
    /// `base_url` is the serving process's internal listener, e.g. `http://127.0.0.1:8081`.
    pub fn new(base_url: &str, secret: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::config_source("cannot build the registry client", e))?;
        Ok(Self {
            http,
            endpoint: format!("{}{REGISTRY_PATH}", base_url.trim_end_matches('/')),
            secret: secret.to_owned(),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, op: RegistryOp) -> Result<T> {
        let response = self
            .http
            .post(&self.endpoint)
            .header(SECRET_HEADER, &self.secret)
            .json(&op)
            .send()
            .await
            .map_err(|e| Error::registry(&self.endpoint, e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Error::registry_answer(format!(
                "{}: {status}: {body}",
                self.endpoint
            )));
        }
        response
            .json()
            .await
            .map_err(|e| Error::registry(format!("{}: bad answer", self.endpoint), e))
    }
}

#[async_trait]
impl Registry for RemoteRegistry {
    async fn upsert_gateway(&self, gateway: &GatewayRecord, ttl: Duration) -> Result<()> {
        self.call(RegistryOp::UpsertGateway {
            gateway: gateway.clone(),
            ttl_ms: ms(ttl),
        })
        .await
    }
    async fn remove_gateway(&self, gateway_id: &str) -> Result<()> {
        self.call(RegistryOp::RemoveGateway {
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn gateway(&self, gateway_id: &str) -> Result<Option<GatewayRecord>> {
        self.call(RegistryOp::Gateway {
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        self.call(RegistryOp::Gateways).await
    }
    async fn put_connection(&self, connection: &ConnectionRecord, ttl: Duration) -> Result<()> {
        self.call(RegistryOp::PutConnection {
            connection: connection.clone(),
            ttl_ms: ms(ttl),
        })
        .await
    }
    async fn remove_connection(&self, connection_id: &str, gateway_id: &str) -> Result<()> {
        self.call(RegistryOp::RemoveConnection {
            connection_id: connection_id.into(),
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionRecord>> {
        self.call(RegistryOp::Connection {
            connection_id: connection_id.into(),
        })
        .await
    }
    async fn add_room_gateway(&self, room_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.call(RegistryOp::AddRoomGateway {
            room_id: room_id.into(),
            gateway_id: gateway_id.into(),
            ttl_ms: ms(ttl),
        })
        .await
    }
    async fn remove_room_gateway(&self, room_id: &str, gateway_id: &str) -> Result<()> {
        self.call(RegistryOp::RemoveRoomGateway {
            room_id: room_id.into(),
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn room_gateways(&self, room_id: &str) -> Result<Vec<String>> {
        self.call(RegistryOp::RoomGateways {
            room_id: room_id.into(),
        })
        .await
    }
    async fn add_user_gateway(&self, user_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.call(RegistryOp::AddUserGateway {
            user_id: user_id.into(),
            gateway_id: gateway_id.into(),
            ttl_ms: ms(ttl),
        })
        .await
    }
    async fn remove_user_gateway(&self, user_id: &str, gateway_id: &str) -> Result<()> {
        self.call(RegistryOp::RemoveUserGateway {
            user_id: user_id.into(),
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn user_gateways(&self, user_id: &str) -> Result<Vec<String>> {
        self.call(RegistryOp::UserGateways {
            user_id: user_id.into(),
        })
        .await
    }
    async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        self.call(RegistryOp::PutToken {
            token: token.clone(),
        })
        .await
    }
    async fn token(&self, user_id: &str, room_id: &str) -> Result<Option<TokenRecord>> {
        self.call(RegistryOp::Token {
            user_id: user_id.into(),
            room_id: room_id.into(),
        })
        .await
    }
    async fn set_fast_verifier(
        &self,
        user_id: &str,
        room_id: &str,
        token_hash: &str,
        verifier: &str,
    ) -> Result<bool> {
        self.call(RegistryOp::SetFastVerifier {
            user_id: user_id.into(),
            room_id: room_id.into(),
            token_hash: token_hash.into(),
            verifier: verifier.into(),
        })
        .await
    }
    async fn delete_token(&self, user_id: &str, room_id: &str) -> Result<bool> {
        self.call(RegistryOp::DeleteToken {
            user_id: user_id.into(),
            room_id: room_id.into(),
        })
        .await
    }
    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys> {
        self.call(RegistryOp::GatewayKeys {
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn clear_gateway_keys(&self, gateway_id: &str) -> Result<()> {
        self.call(RegistryOp::ClearGatewayKeys {
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn append_history(&self, entry: &HistoryEntry, ttl: Duration, keep: usize) -> Result<()> {
        self.call(RegistryOp::AppendHistory {
            entry: entry.clone(),
            ttl_ms: ms(ttl),
            keep,
        })
        .await
    }
    async fn read_history(&self, stream: &str, after: Pos, limit: usize) -> Result<HistoryPage> {
        self.call(RegistryOp::ReadHistory {
            stream: stream.into(),
            after,
            limit,
        })
        .await
    }
    async fn reap_gateway(&self, gateway_id: &str) -> Result<Reaped> {
        self.call(RegistryOp::ReapGateway {
            gateway_id: gateway_id.into(),
        })
        .await
    }
    async fn refresh(
        &self,
        gateway: &GatewayRecord,
        ttl: Duration,
        rows: &Holdings,
        row_ttl: Duration,
    ) -> Result<()> {
        self.call(RegistryOp::Refresh {
            gateway: gateway.clone(),
            rooms: rows.rooms.clone(),
            users: rows.users.clone(),
            connections: rows.connections.clone(),
            ttl_ms: ms(ttl),
            row_ttl_ms: ms(row_ttl),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;

    /// An operation as the client sends it and the server reads it, and its answer back.
    async fn round_trip<T: serde::de::DeserializeOwned>(
        registry: &dyn Registry,
        op: RegistryOp,
    ) -> T {
        let wire = serde_json::to_vec(&op).expect("encode");
        let op: RegistryOp = serde_json::from_slice(&wire).expect("decode");
        let answer = execute(registry, op).await.expect("execute");
        serde_json::from_value(answer).expect("answer")
    }

    #[tokio::test]
    async fn the_reaper_operations_cross_the_wire() {
        let registry = MemoryRegistry::new();
        let ttl = Duration::from_secs(60);
        registry.add_room_gateway("r", "g", ttl).await.expect("add");
        registry.add_user_gateway("u", "g", ttl).await.expect("add");
        let gateway_id = String::from("g");

        let keys: GatewayKeys = round_trip(
            &registry,
            RegistryOp::GatewayKeys {
                gateway_id: gateway_id.clone(),
            },
        )
        .await;
        assert_eq!(
            keys,
            GatewayKeys {
                rooms: vec!["r".into()],
                users: vec!["u".into()],
                connections: vec![],
            }
        );
        let reaped: Reaped = round_trip(
            &registry,
            RegistryOp::ReapGateway {
                gateway_id: gateway_id.clone(),
            },
        )
        .await;
        assert_eq!(
            reaped,
            Reaped {
                gateway_row: false,
                rooms: 1,
                users: 1,
                connections: 0,
                gone: Vec::new(),
            }
        );
        let () = round_trip(&registry, RegistryOp::ClearGatewayKeys { gateway_id }).await;
        assert!(
            registry
                .room_gateways("r")
                .await
                .expect("lookup")
                .is_empty()
        );
    }
}
