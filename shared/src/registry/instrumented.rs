//! A [`Registry`] wrapper that records each call's latency in
//! `hermes_registry_duration_seconds{op}`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    ConnectionRecord, GatewayKeys, GatewayRecord, Holdings, Reaped, Registry, TokenRecord,
};
use crate::error::Result;
use crate::history::{HistoryEntry, HistoryPage, Pos};
use crate::metrics::Metrics;

/// Times every call of the inner registry.
pub struct Instrumented {
    inner: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Registry>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(&self, op: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .registry_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait]
impl Registry for Instrumented {
    async fn upsert_gateway(&self, gateway: &GatewayRecord, ttl: Duration) -> Result<()> {
        self.timed("upsert_gateway", self.inner.upsert_gateway(gateway, ttl))
            .await
    }
    async fn remove_gateway(&self, gateway_id: &str) -> Result<()> {
        self.timed("remove_gateway", self.inner.remove_gateway(gateway_id))
            .await
    }
    async fn gateway(&self, gateway_id: &str) -> Result<Option<GatewayRecord>> {
        self.timed("gateway", self.inner.gateway(gateway_id)).await
    }
    async fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        self.timed("gateways", self.inner.gateways()).await
    }
    async fn put_connection(&self, connection: &ConnectionRecord, ttl: Duration) -> Result<()> {
        self.timed("put_connection", self.inner.put_connection(connection, ttl))
            .await
    }
    async fn remove_connection(&self, connection_id: &str, gateway_id: &str) -> Result<()> {
        self.timed(
            "remove_connection",
            self.inner.remove_connection(connection_id, gateway_id),
        )
        .await
    }
    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionRecord>> {
        self.timed("connection", self.inner.connection(connection_id))
            .await
    }
    async fn add_room_gateway(&self, room_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.timed(
            "add_room_gateway",
            self.inner.add_room_gateway(room_id, gateway_id, ttl),
        )
        .await
    }
    async fn remove_room_gateway(&self, room_id: &str, gateway_id: &str) -> Result<()> {
        self.timed(
            "remove_room_gateway",
            self.inner.remove_room_gateway(room_id, gateway_id),
        )
        .await
    }
    async fn room_gateways(&self, room_id: &str) -> Result<Vec<String>> {
        self.timed("room_gateways", self.inner.room_gateways(room_id))
            .await
    }
    async fn add_user_gateway(&self, user_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        self.timed(
            "add_user_gateway",
            self.inner.add_user_gateway(user_id, gateway_id, ttl),
        )
        .await
    }
    async fn remove_user_gateway(&self, user_id: &str, gateway_id: &str) -> Result<()> {
        self.timed(
            "remove_user_gateway",
            self.inner.remove_user_gateway(user_id, gateway_id),
        )
        .await
    }
    async fn user_gateways(&self, user_id: &str) -> Result<Vec<String>> {
        self.timed("user_gateways", self.inner.user_gateways(user_id))
            .await
    }
    async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        self.timed("put_token", self.inner.put_token(token)).await
    }
    async fn token(&self, user_id: &str, room_id: &str) -> Result<Option<TokenRecord>> {
        self.timed("token", self.inner.token(user_id, room_id))
            .await
    }
    async fn set_fast_verifier(
        &self,
        user_id: &str,
        room_id: &str,
        token_hash: &str,
        verifier: &str,
    ) -> Result<bool> {
        self.timed(
            "set_fast_verifier",
            self.inner
                .set_fast_verifier(user_id, room_id, token_hash, verifier),
        )
        .await
    }
    async fn delete_token(&self, user_id: &str, room_id: &str) -> Result<bool> {
        self.timed("delete_token", self.inner.delete_token(user_id, room_id))
            .await
    }
    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys> {
        self.timed("gateway_keys", self.inner.gateway_keys(gateway_id))
            .await
    }
    async fn clear_gateway_keys(&self, gateway_id: &str) -> Result<()> {
        self.timed(
            "clear_gateway_keys",
            self.inner.clear_gateway_keys(gateway_id),
        )
        .await
    }
    async fn reap_gateway(&self, gateway_id: &str) -> Result<Reaped> {
        self.timed("reap_gateway", self.inner.reap_gateway(gateway_id))
            .await
    }
    async fn append_history(&self, entry: &HistoryEntry, ttl: Duration, keep: usize) -> Result<()> {
        self.timed(
            "append_history",
            self.inner.append_history(entry, ttl, keep),
        )
        .await
    }
    async fn read_history(&self, stream: &str, after: Pos, limit: usize) -> Result<HistoryPage> {
        self.timed(
            "read_history",
            self.inner.read_history(stream, after, limit),
        )
        .await
    }
    async fn refresh(
        &self,
        gateway: &GatewayRecord,
        ttl: Duration,
        rows: &Holdings,
        row_ttl: Duration,
    ) -> Result<()> {
        let refresh = self.inner.refresh(gateway, ttl, rows, row_ttl);
        self.timed("refresh", refresh).await
    }
}
