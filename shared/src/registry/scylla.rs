//! The ScyllaDB registry. Placeholder: the CQL implementation replaces this file.

use std::time::Duration;

use async_trait::async_trait;

use super::{ConnectionRecord, GatewayRecord, Registry, TokenRecord};
use crate::config::ScyllaConfig;
use crate::error::{Error, Result};

/// A registry in ScyllaDB.
pub struct ScyllaRegistry;

impl ScyllaRegistry {
    /// Connects, creates the schema if absent, prepares the statements.
    pub async fn connect(_config: &ScyllaConfig) -> Result<Self> {
        Err(Error::Config(
            "HERMES_REGISTRY: scylla is not available in this build yet".into(),
        ))
    }
}

#[async_trait]
impl Registry for ScyllaRegistry {
    async fn upsert_gateway(&self, _: &GatewayRecord, _: Duration) -> Result<()> {
        Err(unavailable())
    }
    async fn remove_gateway(&self, _: &str) -> Result<()> {
        Err(unavailable())
    }
    async fn gateway(&self, _: &str) -> Result<Option<GatewayRecord>> {
        Err(unavailable())
    }
    async fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        Err(unavailable())
    }
    async fn put_connection(&self, _: &ConnectionRecord, _: Duration) -> Result<()> {
        Err(unavailable())
    }
    async fn remove_connection(&self, _: &str) -> Result<()> {
        Err(unavailable())
    }
    async fn connection(&self, _: &str) -> Result<Option<ConnectionRecord>> {
        Err(unavailable())
    }
    async fn add_room_gateway(&self, _: &str, _: &str, _: Duration) -> Result<()> {
        Err(unavailable())
    }
    async fn remove_room_gateway(&self, _: &str, _: &str) -> Result<()> {
        Err(unavailable())
    }
    async fn room_gateways(&self, _: &str) -> Result<Vec<String>> {
        Err(unavailable())
    }
    async fn add_user_gateway(&self, _: &str, _: &str, _: Duration) -> Result<()> {
        Err(unavailable())
    }
    async fn remove_user_gateway(&self, _: &str, _: &str) -> Result<()> {
        Err(unavailable())
    }
    async fn user_gateways(&self, _: &str) -> Result<Vec<String>> {
        Err(unavailable())
    }
    async fn put_token(&self, _: &TokenRecord) -> Result<()> {
        Err(unavailable())
    }
    async fn token(&self, _: &str, _: &str) -> Result<Option<TokenRecord>> {
        Err(unavailable())
    }
    async fn set_fast_verifier(&self, _: &str, _: &str, _: &str, _: &str) -> Result<bool> {
        Err(unavailable())
    }
    async fn delete_token(&self, _: &str, _: &str) -> Result<bool> {
        Err(unavailable())
    }
}

fn unavailable() -> Error {
    Error::RegistryUnavailable("scylla registry not implemented".into())
}
