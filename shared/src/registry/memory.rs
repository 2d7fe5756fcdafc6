//! The in-memory registry: standalone mode, unit tests, and the registry that a
//! standalone process can serve to other processes (see [`super::remote`]).
//!
//! It keeps no per-gateway index: [`Registry::gateway_keys`] scans the maps (memory can),
//! so there is nothing to clear after a reap.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{ConnectionRecord, GatewayKeys, GatewayRecord, Registry, TokenRecord};
use crate::error::Result;
use crate::history::{HistoryEntry, HistoryPage, Pos};

#[derive(Default)]
struct Tables {
    gateways: HashMap<String, (GatewayRecord, Instant)>,
    connections: HashMap<String, (ConnectionRecord, Instant)>,
    room_gateways: HashMap<String, HashMap<String, Instant>>,
    user_gateways: HashMap<String, HashMap<String, Instant>>,
    tokens: HashMap<(String, String), TokenRecord>,
    history: HashMap<String, StreamHistory>,
}

/// One stream's entries in position order, each with its expiry, at most `keep` of them.
#[derive(Default)]
struct StreamHistory {
    entries: VecDeque<(HistoryEntry, Instant)>,
    /// The newest position dropped to keep the bound: a read after an older position is
    /// not complete.
    trimmed_to: Option<Pos>,
}

impl StreamHistory {
    fn append(&mut self, entry: HistoryEntry, exp: Instant, keep: usize, now: Instant) {
        while self.entries.front().is_some_and(|(_, e)| *e <= now) {
            self.entries.pop_front();
        }
        // Writers race: an entry may arrive after one with a higher position.
        let at = self.entries.partition_point(|(e, _)| e.pos <= entry.pos);
        self.entries.insert(at, (entry, exp));
        while self.entries.len() > keep.max(1) {
            if let Some((dropped, _)) = self.entries.pop_front() {
                self.trimmed_to = self.trimmed_to.max(Some(dropped.pos));
            }
        }
    }

    fn read(&self, after: Pos, limit: usize, now: Instant) -> HistoryPage {
        let mut entries: Vec<HistoryEntry> = self
            .entries
            .iter()
            .filter(|(e, exp)| e.pos > after && *exp > now)
            .take(limit.saturating_add(1))
            .map(|(e, _)| e.clone())
            .collect();
        let complete = entries.len() <= limit && self.trimmed_to.is_none_or(|t| t <= after);
        entries.truncate(limit);
        HistoryPage { entries, complete }
    }
}

/// A registry held in this process. Rows with a TTL expire like Scylla's.
#[derive(Default)]
pub struct MemoryRegistry {
    tables: Mutex<Tables>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops expired rows (reads ignore them anyway; this bounds memory).
    pub fn purge_expired(&self) {
        let now = Instant::now();
        let mut guard = self.tables.lock();
        let t = &mut *guard;
        t.gateways.retain(|_, (_, exp)| *exp > now);
        t.connections.retain(|_, (_, exp)| *exp > now);
        t.history.retain(|_, h| {
            h.entries.retain(|(_, exp)| *exp > now);
            !h.entries.is_empty()
        });
        for map in [&mut t.room_gateways, &mut t.user_gateways] {
            map.retain(|_, gws| {
                gws.retain(|_, exp| *exp > now);
                !gws.is_empty()
            });
        }
    }
}

fn live(map: Option<&HashMap<String, Instant>>) -> Vec<String> {
    let now = Instant::now();
    map.map(|gws| {
        gws.iter()
            .filter(|(_, exp)| **exp > now)
            .map(|(g, _)| g.clone())
            .collect()
    })
    .unwrap_or_default()
}

/// The keys of `map` whose live members include `gateway_id`.
fn keys_holding(
    map: &HashMap<String, HashMap<String, Instant>>,
    gateway_id: &str,
    now: Instant,
) -> Vec<String> {
    map.iter()
        .filter(|(_, gws)| gws.get(gateway_id).is_some_and(|exp| *exp > now))
        .map(|(key, _)| key.clone())
        .collect()
}

fn remove_member(map: &mut HashMap<String, HashMap<String, Instant>>, key: &str, gateway_id: &str) {
    if let Some(gws) = map.get_mut(key) {
        gws.remove(gateway_id);
        if gws.is_empty() {
            map.remove(key);
        }
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn upsert_gateway(&self, gateway: &GatewayRecord, ttl: Duration) -> Result<()> {
        let exp = Instant::now() + ttl;
        self.tables
            .lock()
            .gateways
            .insert(gateway.gateway_id.clone(), (gateway.clone(), exp));
        Ok(())
    }

    async fn remove_gateway(&self, gateway_id: &str) -> Result<()> {
        self.tables.lock().gateways.remove(gateway_id);
        Ok(())
    }

    async fn gateway(&self, gateway_id: &str) -> Result<Option<GatewayRecord>> {
        let now = Instant::now();
        Ok(self
            .tables
            .lock()
            .gateways
            .get(gateway_id)
            .filter(|(_, exp)| *exp > now)
            .map(|(g, _)| g.clone()))
    }

    async fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        let now = Instant::now();
        Ok(self
            .tables
            .lock()
            .gateways
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(g, _)| g.clone())
            .collect())
    }

    async fn put_connection(&self, connection: &ConnectionRecord, ttl: Duration) -> Result<()> {
        let exp = Instant::now() + ttl;
        self.tables
            .lock()
            .connections
            .insert(connection.connection_id.clone(), (connection.clone(), exp));
        Ok(())
    }

    async fn remove_connection(&self, connection_id: &str, _gateway_id: &str) -> Result<()> {
        self.tables.lock().connections.remove(connection_id);
        Ok(())
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionRecord>> {
        let now = Instant::now();
        Ok(self
            .tables
            .lock()
            .connections
            .get(connection_id)
            .filter(|(_, exp)| *exp > now)
            .map(|(c, _)| c.clone()))
    }

    async fn add_room_gateway(&self, room_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        let exp = Instant::now() + ttl;
        self.tables
            .lock()
            .room_gateways
            .entry(room_id.to_owned())
            .or_default()
            .insert(gateway_id.to_owned(), exp);
        Ok(())
    }

    async fn remove_room_gateway(&self, room_id: &str, gateway_id: &str) -> Result<()> {
        remove_member(&mut self.tables.lock().room_gateways, room_id, gateway_id);
        Ok(())
    }

    async fn room_gateways(&self, room_id: &str) -> Result<Vec<String>> {
        Ok(live(self.tables.lock().room_gateways.get(room_id)))
    }

    async fn add_user_gateway(&self, user_id: &str, gateway_id: &str, ttl: Duration) -> Result<()> {
        let exp = Instant::now() + ttl;
        self.tables
            .lock()
            .user_gateways
            .entry(user_id.to_owned())
            .or_default()
            .insert(gateway_id.to_owned(), exp);
        Ok(())
    }

    async fn remove_user_gateway(&self, user_id: &str, gateway_id: &str) -> Result<()> {
        remove_member(&mut self.tables.lock().user_gateways, user_id, gateway_id);
        Ok(())
    }

    async fn user_gateways(&self, user_id: &str) -> Result<Vec<String>> {
        Ok(live(self.tables.lock().user_gateways.get(user_id)))
    }

    async fn put_token(&self, token: &TokenRecord) -> Result<()> {
        self.tables.lock().tokens.insert(
            (token.user_id.clone(), token.room_id.clone()),
            token.clone(),
        );
        Ok(())
    }

    async fn token(&self, user_id: &str, room_id: &str) -> Result<Option<TokenRecord>> {
        Ok(self
            .tables
            .lock()
            .tokens
            .get(&(user_id.to_owned(), room_id.to_owned()))
            .cloned())
    }

    async fn set_fast_verifier(
        &self,
        user_id: &str,
        room_id: &str,
        token_hash: &str,
        verifier: &str,
    ) -> Result<bool> {
        let mut t = self.tables.lock();
        match t.tokens.get_mut(&(user_id.to_owned(), room_id.to_owned())) {
            Some(row) if row.token_hash == token_hash => {
                row.fast_verifier = Some(verifier.to_owned());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_token(&self, user_id: &str, room_id: &str) -> Result<bool> {
        Ok(self
            .tables
            .lock()
            .tokens
            .remove(&(user_id.to_owned(), room_id.to_owned()))
            .is_some())
    }

    async fn gateway_keys(&self, gateway_id: &str) -> Result<GatewayKeys> {
        let now = Instant::now();
        let t = self.tables.lock();
        Ok(GatewayKeys {
            rooms: keys_holding(&t.room_gateways, gateway_id, now),
            users: keys_holding(&t.user_gateways, gateway_id, now),
            connections: t
                .connections
                .iter()
                .filter(|(_, (c, exp))| c.gateway_id == gateway_id && *exp > now)
                .map(|(id, _)| id.clone())
                .collect(),
        })
    }

    async fn clear_gateway_keys(&self, _gateway_id: &str) -> Result<()> {
        // No index to clear: `gateway_keys` reads the rows themselves.
        Ok(())
    }

    async fn append_history(&self, entry: &HistoryEntry, ttl: Duration, keep: usize) -> Result<()> {
        let now = Instant::now();
        self.tables
            .lock()
            .history
            .entry(entry.stream.clone())
            .or_default()
            .append(entry.clone(), now + ttl, keep, now);
        Ok(())
    }

    async fn read_history(&self, stream: &str, after: Pos, limit: usize) -> Result<HistoryPage> {
        let now = Instant::now();
        Ok(match self.tables.lock().history.get(stream) {
            Some(h) => h.read(after, limit, now),
            None => HistoryPage {
                entries: Vec::new(),
                complete: true,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_registry_meets_the_registry_contract() {
        super::super::contract::run_all(&MemoryRegistry::new()).await;
    }

    #[tokio::test]
    async fn rows_disappear_when_their_ttl_runs_out() {
        let r = MemoryRegistry::new();
        r.add_room_gateway("room", "g", Duration::ZERO)
            .await
            .expect("add");
        let g = GatewayRecord {
            gateway_id: "g".into(),
            internal_url: "http://x".into(),
            started_at: 0,
        };
        r.upsert_gateway(&g, Duration::ZERO).await.expect("upsert");
        assert!(r.room_gateways("room").await.expect("lookup").is_empty());
        assert_eq!(r.gateway("g").await.expect("get"), None);
        r.purge_expired();
        assert!(r.tables.lock().room_gateways.is_empty());
    }
}
