//! `amqp-publish [--not-json] QUEUE BODY`: publishes one persistent message to QUEUE on the
//! broker at `HERMES_TEST_AMQP_URL` and waits for the broker's confirm (a producer's way
//! in, for scripts: `scripts/kube/ingress-on-node.sh`, `prometheus-on-node.sh`). BODY must
//! be JSON unless `--not-json` (a poison message on purpose). Exit 2 on a usage error.

use hermes_e2e::AmqpPublisher;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let not_json = args.first().is_some_and(|a| a == "--not-json");
    if not_json {
        args.remove(0);
    }
    let [queue, body] = args.as_slice() else {
        eprintln!("usage: amqp-publish [--not-json] QUEUE BODY");
        std::process::exit(2);
    };
    if let (false, Err(e)) = (not_json, serde_json::from_str::<serde_json::Value>(body)) {
        eprintln!("amqp-publish: the body is not JSON: {e}");
        std::process::exit(2);
    }
    AmqpPublisher::new().publish(queue, body.as_bytes()).await;
}
