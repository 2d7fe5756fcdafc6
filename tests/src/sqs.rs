//! The test SQS server: a client and per-test queues.

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;

use crate::sqs_endpoint;

/// A client of the test SQS server.
pub async fn sqs() -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "hermes-e2e"))
        .endpoint_url(sqs_endpoint())
        .load()
        .await;
    Client::new(&config)
}

/// Creates `name` (a unique queue name) and `name-dlq`; the queue's redrive policy moves a
/// message to the DLQ after `max_receive` receives.
pub async fn queues(sqs: &Client, name: &str, max_receive: u32) -> (String, String) {
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the SQS server at {} is not usable ({}); start it with scripts/services/sqs.sh start",
                sqs_endpoint(),
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })
        .queue_url
        .expect("the DLQ's URL");
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("the DLQ's ARN");
    let redrive =
        json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive.to_string()});
    let queue_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("the queue's URL");
    (queue_url, dlq_url)
}

/// The environment a consumer needs to read `queue_url` on the test server.
pub fn consumer_env(queue_url: &str, dlq_url: &str) -> Vec<(String, String)> {
    [
        ("HERMES_SOURCE", "sqs"),
        ("HERMES_SQS_QUEUE_URL", queue_url),
        ("HERMES_SQS_DEAD_LETTER_QUEUE_URL", dlq_url),
        ("HERMES_SQS_WAIT_SECONDS", "1"),
        ("AWS_ENDPOINT_URL_SQS", sqs_endpoint().as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Sends `body` (a JSON document or any text, sent as it is) to `queue_url`.
pub async fn send_body(sqs: &Client, queue_url: &str, body: &str) {
    sqs.send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage");
}
