//! The fault checker (`hermes_e2e::faults`) in the test command: every fault under steady
//! publishing from RabbitMQ, SQS and `POST /v1/publish`, to Rust `hermes.v1` clients and
//! `hermes.js` clients on three gateways; nothing lost, nothing duplicated, and a stopped
//! gateway does not slow the others down.

use hermes_e2e::faults::{self, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_loses_or_duplicates_a_notification_and_a_frozen_gateway_stalls_nobody_else() {
    let reports = faults::run(&Settings::default()).await;
    let (table, lost, duplicated) = faults::summary(&reports);
    println!("{table}");
    assert_eq!((lost, duplicated), (0, 0), "see the table above");
    for r in &reports {
        assert!(r.published > 0, "{} published nothing", r.name());
        if let Some(p) = r.others_p99_ms {
            // Twice the baseline, and 25 ms of room for a 2-core box's scheduling noise.
            assert!(
                p.during <= 2.0 * p.before + 25.0,
                "a stopped gateway slowed the others: p99 {} ms against {} ms",
                p.during,
                p.before
            );
        }
    }
}
