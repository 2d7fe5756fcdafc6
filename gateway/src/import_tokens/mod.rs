//! `hermes-gateway import-tokens FILE...`: copies the original's DynamoDB token table (its
//! `user_id, room_id, token` rows, `token` holding `bcrypt(token)`) into the registry's
//! `tokens` table, from the JSON of `aws dynamodb scan` or the data files of a DynamoDB
//! export to S3 (DynamoDB JSON, gzipped or not; `-` reads stdin).
//!
//! Idempotent: a row whose stored hash is already the exported one is left alone
//! (`unchanged`); `--keep-existing` leaves every existing row alone (`kept`). Written rows
//! have no fast verifier (the first connect of each token pays one bcrypt) and `created_at`
//! 0, so that JWTs Hermes issued for the same token stay valid (decision 0028). A bad row is
//! reported with its file and line and skipped; progress goes to stderr every
//! [`PROGRESS_EVERY`] rows, the counts to stdout at the end.

mod reader;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt as _};
use hermes_shared::config::{self, INTERNAL_SECRET, Strings};
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::{Registry, RegistryKind, TokenRecord};
use hermes_shared::wire::check_id;
use serde_json::{Map, Value};

use crate::Result;

/// How often progress is reported, in rows.
pub const PROGRESS_EVERY: usize = 1000;

/// Rows written at the same time.
const CONCURRENCY: usize = 32;

/// The `import-tokens` subcommand's arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Export files: the JSON output of `aws dynamodb scan`, or data files of a DynamoDB
    /// export to S3 (`*.json` or `*.json.gz`); `-` reads stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The attribute holding the user id.
    #[arg(long, default_value = "user_id")]
    pub user_attribute: String,
    /// The attribute holding the room id (the original's company code, tenant, ...).
    #[arg(long, default_value = "room_id")]
    pub room_attribute: String,
    /// The attribute holding bcrypt(token).
    #[arg(long, default_value = "token")]
    pub token_attribute: String,
    /// Leave rows that already exist alone, whatever their hash (the default replaces a
    /// different hash with the exported one).
    #[arg(long)]
    pub keep_existing: bool,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub read: usize,
    pub written: usize,
    pub unchanged: usize,
    pub kept: usize,
    pub bad: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows read: {} written, {} unchanged, {} kept, {} bad (skipped)",
            self.read, self.written, self.unchanged, self.kept, self.bad
        )
    }
}

/// A validated `import-tokens` command.
pub struct ImportCommand {
    registry: RegistryKind,
    internal_secret: String,
    timeout: Duration,
    args: ImportArgs,
}

impl ImportCommand {
    /// Reads the registry's settings: the rows go to a shared registry (`scylla`, or
    /// `remote` with `HERMES_INTERNAL_SECRET`); the memory one would vanish with the command.
    pub fn new(strings: &dyn Strings, args: ImportArgs) -> Result<Self> {
        let registry = RegistryKind::from_strings(strings, &config::stage(strings))?;
        let internal_secret = match &registry {
            RegistryKind::Memory => {
                return Err(hermes_shared::Error::Config(
                    "HERMES_REGISTRY: import-tokens writes to a shared registry; set it to \
                     scylla (with HERMES_SCYLLA_*) or remote (with HERMES_REGISTRY_URL)"
                        .into(),
                )
                .into());
            }
            RegistryKind::Remote { .. } => config::secret(strings, INTERNAL_SECRET, false, 0)?,
            RegistryKind::Scylla(_) => String::new(),
        };
        Ok(Self {
            registry,
            internal_secret,
            timeout: config::deliver_timeout(strings)?.max(Duration::from_secs(5)),
            args,
        })
    }

    /// Imports every file and prints the counts.
    pub async fn run(self) -> Result<Counts> {
        let registry = hermes_shared::registry::connect(
            &self.registry,
            &self.internal_secret,
            self.timeout,
            Arc::new(Metrics::new()),
        )
        .await?;
        let mut counts = Counts::default();
        for file in &self.args.files {
            import_file(registry.as_ref(), &self.args, file, &mut counts).await?;
        }
        println!("import-tokens: {counts}");
        Ok(counts)
    }
}

async fn import_file(
    registry: &dyn Registry,
    args: &ImportArgs,
    file: &PathBuf,
    counts: &mut Counts,
) -> Result<()> {
    let name = file.display().to_string();
    let bytes = if name == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(file)
    }
    .map_err(|e| hermes_shared::Error::Invalid(format!("{name}: cannot read: {e}")))?;
    let entries = reader::decode(bytes)
        .and_then(|text| reader::entries(&text))
        .map_err(|e| hermes_shared::Error::Invalid(format!("{name}: {e}")))?;
    let rows = entries.into_iter().map(|entry| {
        let line = entry.line;
        (line, entry.item.and_then(|item| record(&item, args)))
    });
    let mut outcomes = stream::iter(rows)
        .map(|(line, row)| async move {
            let outcome = match row {
                Ok(record) => store(registry, record, args.keep_existing)
                    .await
                    .map_err(|e| e.to_string()),
                Err(reason) => Err(reason),
            };
            (line, outcome)
        })
        .buffered(CONCURRENCY);
    while let Some((line, outcome)) = outcomes.next().await {
        counts.read += 1;
        match outcome {
            Ok(Stored::Written) => counts.written += 1,
            Ok(Stored::Unchanged) => counts.unchanged += 1,
            Ok(Stored::Kept) => counts.kept += 1,
            Err(reason) => {
                counts.bad += 1;
                eprintln!("import-tokens: {name}:{line}: {reason}; skipped");
            }
        }
        if counts.read.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("import-tokens: {counts}");
        }
    }
    Ok(())
}

/// The token row an exported item stands for.
fn record(
    item: &Map<String, Value>,
    args: &ImportArgs,
) -> std::result::Result<TokenRecord, String> {
    let user_id = id_attribute(item, &args.user_attribute)?;
    let room_id = id_attribute(item, &args.room_attribute)?;
    let token_hash = match attribute(item, &args.token_attribute)? {
        ("S", hash) if is_bcrypt(hash) => hash.to_owned(),
        ("S", _) => {
            return Err(format!(
                "`{}` is not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)",
                args.token_attribute
            ));
        }
        (kind, _) => {
            return Err(format!(
                "`{}` must be a string (S), not {kind}",
                args.token_attribute
            ));
        }
    };
    Ok(TokenRecord {
        user_id,
        room_id,
        token_hash,
        fast_verifier: None,
        created_at: 0,
    })
}

/// A DynamoDB attribute `{"<type>": "<value>"}` with a string value: (type, value).
fn attribute<'a>(
    item: &'a Map<String, Value>,
    name: &str,
) -> std::result::Result<(&'a str, &'a str), String> {
    let Some(Value::Object(typed)) = item.get(name) else {
        return Err(format!("the attribute `{name}` is missing"));
    };
    match typed.iter().next() {
        Some((kind, Value::String(value))) if typed.len() == 1 => {
            Ok((kind.as_str(), value.as_str()))
        }
        _ => Err(format!(
            "the attribute `{name}` is not a DynamoDB string or number"
        )),
    }
}

/// An id attribute: a string (S), or an integer number (N) read as its decimal string.
fn id_attribute(item: &Map<String, Value>, name: &str) -> std::result::Result<String, String> {
    let id = match attribute(item, name)? {
        ("S", value) => value.to_owned(),
        ("N", value) => match value.parse::<i128>() {
            Ok(n) => n.to_string(),
            Err(_) => return Err(format!("`{name}` is the number {value}, not an integer")),
        },
        (kind, _) => {
            return Err(format!(
                "`{name}` must be a string (S) or a number (N), not {kind}"
            ));
        }
    };
    check_id(name, &id).map_err(|e| e.to_string())?;
    Ok(id)
}

fn is_bcrypt(hash: &str) -> bool {
    hash.len() == 60 && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// What happened to one row.
enum Stored {
    Written,
    Unchanged,
    Kept,
}

async fn store(
    registry: &dyn Registry,
    record: TokenRecord,
    keep_existing: bool,
) -> Result<Stored> {
    match registry.token(&record.user_id, &record.room_id).await? {
        Some(existing) if existing.token_hash == record.token_hash => Ok(Stored::Unchanged),
        Some(_) if keep_existing => Ok(Stored::Kept),
        _ => {
            registry.put_token(&record).await?;
            Ok(Stored::Written)
        }
    }
}

#[cfg(test)]
mod tests {
    use hermes_shared::registry::memory::MemoryRegistry;

    use super::*;

    const HASH: &str = "$2a$04$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";

    fn args() -> ImportArgs {
        ImportArgs {
            files: vec![],
            user_attribute: "user_id".into(),
            room_attribute: "company_code".into(),
            token_attribute: "token".into(),
            keep_existing: false,
        }
    }

    fn item(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn items_become_token_rows_with_integer_ids_as_decimal_strings() {
        let row = record(
            &item(serde_json::json!({
                "user_id": {"N": "42"}, "company_code": {"S": "acme"}, "token": {"S": HASH},
                "updated_at": {"S": "ignored"}
            })),
            &args(),
        )
        .expect("valid");
        assert_eq!(
            (
                row.user_id.as_str(),
                row.room_id.as_str(),
                row.token_hash.as_str()
            ),
            ("42", "acme", HASH)
        );
        assert_eq!((row.fast_verifier, row.created_at), (None, 0));
    }

    #[test]
    fn bad_items_say_what_is_wrong() {
        let cases = [
            (
                serde_json::json!({"company_code": {"S": "a"}, "token": {"S": HASH}}),
                "`user_id` is missing",
            ),
            (
                serde_json::json!({"user_id": {"N": "4.2"}, "company_code": {"S": "a"}, "token": {"S": HASH}}),
                "not an integer",
            ),
            (
                serde_json::json!({"user_id": {"BOOL": true}, "company_code": {"S": "a"}, "token": {"S": HASH}}),
                "not a DynamoDB string or number",
            ),
            (
                serde_json::json!({"user_id": {"S": "u"}, "company_code": {"S": ""}, "token": {"S": HASH}}),
                "must not be empty",
            ),
            (
                serde_json::json!({"user_id": {"S": "u"}, "company_code": {"S": "a"}, "token": {"S": "plain-token"}}),
                "not a bcrypt hash",
            ),
        ];
        for (json, expected) in cases {
            let error = record(&item(json.clone()), &args()).expect_err("bad");
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[tokio::test]
    async fn importing_again_changes_nothing_and_a_new_hash_replaces_the_old_unless_kept() {
        let registry = MemoryRegistry::new();
        let row = |hash: &str| TokenRecord {
            user_id: "42".into(),
            room_id: "acme".into(),
            token_hash: hash.into(),
            fast_verifier: None,
            created_at: 0,
        };
        let other = HASH.replace("CCCC", "DDDD");
        for (record, keep, expected) in [
            (row(HASH), false, Stored::Written),
            (row(HASH), false, Stored::Unchanged),
            (row(&other), true, Stored::Kept),
            (row(&other), false, Stored::Written),
        ] {
            let stored = store(&registry, record, keep).await.expect("store");
            assert_eq!(
                std::mem::discriminant(&stored),
                std::mem::discriminant(&expected)
            );
        }
        let stored = registry
            .token("42", "acme")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored.token_hash, other);
    }
}
