//! The SQS source. Placeholder: the aws-sdk-sqs implementation replaces this file.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::processor::Processor;
use crate::{Error, Result};

/// Settings of the SQS source.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    pub queue_url: String,
    pub dead_letter_queue_url: Option<String>,
    pub wait: Duration,
    pub visibility: Duration,
    pub max_attempts: u32,
    pub retry_delays: Vec<Duration>,
    pub concurrency: usize,
}

/// Pulls messages from SQS.
pub struct SqsSource {
    settings: SqsSettings,
}

impl SqsSource {
    /// Builds the client from the standard `AWS_*` environment.
    pub async fn new(settings: SqsSettings) -> Result<Self> {
        Ok(Self { settings })
    }

    /// Runs until `shutdown`; `ready` is true while messages are being received.
    pub async fn run(
        self,
        _processor: Arc<Processor>,
        _ready: Arc<AtomicBool>,
        _shutdown: CancellationToken,
    ) -> Result<()> {
        Err(Error::Broker(format!(
            "the SQS source is not available yet ({})",
            self.settings.queue_url
        )))
    }
}
