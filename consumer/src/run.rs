//! Starting and stopping a consumer.
//!
//! Order: build the source the configuration names, open the registry, start the Kubernetes tasks if configured (EndpointSlice view,
//! Lease, reaper), build the router (no local gateway; the EndpointSlice view as its
//! directory), serve `/metrics`, `/healthz`, `/readyz`, run the source. On SIGTERM/SIGINT
//! the source stops taking new messages, finishes the ones in flight (acknowledging each
//! once its outcome is known), the Lease is released, and the process exits.

use hermes_shared::routes::{Disconnects, RouteClient};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::ConsumerConfig;
use actix_web::{App, HttpResponse, HttpServer, web};
use hermes_shared::metrics::Metrics;
use hermes_shared::router::GatewayClient;
use hermes_shared::router::Router;
use tokio_util::sync::CancellationToken;

use crate::kube::Kube;
use crate::processor::Processor;
use crate::{Error, Result, source};

struct Probe {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn render_metrics(p: web::Data<Probe>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(p.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(p: web::Data<Probe>) -> HttpResponse {
    if p.ready.load(Ordering::Acquire) {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "not consuming"}))
    }
}

/// Runs the consumer until SIGTERM/SIGINT on a runtime of `config.threads` threads: one by
/// default, since routing a message is mostly waiting and handing it between threads costs
/// more CPU than it saves (docs/consumer.md, Measured).
pub fn block_on(config: ConsumerConfig) -> Result<()> {
    let threads = config.threads;
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().thread_name("hermes-consumer");
    let runtime = builder.build().map_err(Error::Runtime)?;
    let system = actix_web::rt::System::with_tokio_rt(move || runtime);
    system.block_on(run(config))
}

/// Runs the consumer until SIGTERM/SIGINT.
pub async fn run(config: ConsumerConfig) -> Result<()> {
    let source = source::from_config(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let registry = hermes_shared::registry::connect(
        &config.registry,
        &config.internal_secret,
        config.deliver_timeout,
        metrics.clone(),
    )
    .await?;
    let client = GatewayClient::new(
        &config.internal_secret,
        config.deliver_timeout,
        metrics.clone(),
    )?
    .with_transport(config.deliver_transport);
    let shutdown = CancellationToken::new();
    let mut router = Router::new(registry.clone(), client, None, metrics.clone())
        .with_route_to_all_up_to(config.route_to_all_max_gateways)
        .with_history(config.history, config.deliver_timeout)
        .with_registry_ttl(config.registry_ttl);
    let kube = match &config.kube {
        Some(kube) => {
            // The reaper's `$disconnect` for the sockets of a gateway whose pod is gone.
            let disconnects =
                RouteClient::new(config.routes.clone(), &config.stage, metrics.clone())
                    .and_then(Disconnects::new);
            let kube = Kube::start(
                kube,
                registry,
                disconnects,
                metrics.clone(),
                shutdown.clone(),
            )
            .await?;
            router = router.with_directory(kube.directory.clone());
            Some(kube)
        }
        None => None,
    };
    let processor = Arc::new(
        Processor::new(router, metrics.clone()).with_max_message_bytes(config.max_message_bytes),
    );
    let ready = Arc::new(AtomicBool::new(false));

    let listener = TcpListener::bind(config.listen).map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let bound = listener.local_addr()?;
    let probe = web::Data::new(Probe {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(probe.clone())
            .route("/metrics", web::get().to(render_metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    println!("hermes-consumer listening http=http://{bound}");

    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        hermes_shared::process::shutdown_signal().await;
        signal_token.cancel();
    });

    tracing::info!(source = source.name(), "starting the source");
    let result = source.run(processor, ready, shutdown.clone()).await;
    // The source has stopped (or failed): stop the Kubernetes tasks too, releasing the Lease.
    shutdown.cancel();
    if let Some(kube) = kube {
        kube.finished().await;
    }
    server_handle.stop(true).await;
    let _ = server_task.await;
    result
}
