//! Room → gateways and user → gateways lookups, batched: concurrent lookups of one table
//! share a `... WHERE key IN ?` request.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt as _;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::statements::fetch_rows;
use crate::batch::Batcher;
use crate::error::{Error, Result};

/// Keys per lookup request at most.
const LOOKUP_BATCH: usize = 64;
/// Lookup requests in flight at once per table; callers beyond wait and go in the next batch.
const LOOKUPS_IN_FLIGHT: usize = 4;

/// A batcher of gateway-id lookups by partition key, for one table.
pub(super) struct Lookups {
    batcher: Batcher<String, Result<Vec<String>>>,
    /// The operation and the table, as failures name them.
    what: String,
}

impl Lookups {
    /// Batches concurrent lookups of `statement` (`SELECT key, gateway_id ... WHERE key IN ?`):
    /// a lone lookup is sent at once; those that arrive while `LOOKUPS_IN_FLIGHT` requests are
    /// out share the next one. Every caller gets its own key's rows, or the request's error.
    /// Under load this turns thousands of single-partition requests per second into a few
    /// hundred multi-partition ones (measured in docs/consumer.md). `what` names the
    /// operation and the table in failures.
    pub(super) fn new(session: Arc<Session>, statement: PreparedStatement, what: String) -> Self {
        let context = what.clone();
        let batcher = Batcher::new(
            LOOKUP_BATCH,
            LOOKUPS_IN_FLIGHT,
            Arc::new(move |keys: Vec<String>| {
                let (session, statement, what) = (session.clone(), statement.clone(), what.clone());
                async move {
                    let mut unique = keys.clone();
                    unique.sort_unstable();
                    unique.dedup();
                    let found =
                        fetch_rows::<(String, String)>(&session, &statement, (&unique,)).await;
                    match found {
                        Ok(rows) => {
                            let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
                            for (key, gateway_id) in rows {
                                by_key.entry(key).or_default().push(gateway_id);
                            }
                            keys.iter()
                                .map(|k| Ok(by_key.get(k).cloned().unwrap_or_default()))
                                .collect()
                        }
                        Err(cause) => {
                            // One failed request answers every caller in it: they share
                            // the driver's error.
                            let cause: Arc<dyn std::error::Error + Send + Sync> = Arc::from(cause);
                            keys.iter()
                                .map(|_| {
                                    Err(Error::RegistryUnavailable {
                                        context: what.clone(),
                                        source: Some(Box::new(cause.clone())),
                                    })
                                })
                                .collect()
                        }
                    }
                }
                .boxed()
            }),
        );
        Self {
            batcher,
            what: context,
        }
    }

    /// The gateway ids under `key`, through the batcher.
    pub(super) async fn get(&self, key: &str) -> Result<Vec<String>> {
        self.batcher
            .submit(key.to_owned())
            .await
            .unwrap_or_else(|| {
                Err(Error::registry_answer(format!(
                    "{}: the lookup was lost",
                    self.what
                )))
            })
    }
}
