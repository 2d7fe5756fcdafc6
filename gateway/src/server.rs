//! Starting and stopping a gateway.
//!
//! Start order: bind both listeners (so port 0 works and the internal URL is known),
//! build the registry, authenticator, hub and router, serve, and refresh the registry rows
//! on a heartbeat. A gateway whose registry is shared accepts sockets only
//! `NEW_GATEWAY_GRACE` after its heartbeat first wrote its row; one that serves its own
//! embedded registry (standalone) writes the row before serving and accepts at once.
//!
//! Shutdown order (SIGTERM or SIGINT), written down once:
//! 1. `/readyz` turns 503 and new upgrades get 503 (the load balancer stops sending);
//! 2. the public listener stops accepting connections;
//! 3. open sockets are closed with 1012 (service restart), spread evenly over
//!    `HERMES_DRAIN_SECONDS` so their reconnects do not stampede the other replicas;
//!    each close removes that socket's registry rows, so routing follows the clients;
//!    the heartbeat goes on meanwhile, so the rows of the sockets not closed yet stay
//!    fresh (the configuration refuses a drain as long as a shared registry's TTL);
//! 4. the heartbeat stops (a refresh in flight finishes first), the gateway row is
//!    deleted, deliver streams from routers are closed (1001) and both servers stop;
//! 5. the process exits, at the latest `HERMES_SHUTDOWN_GRACE_SECONDS` after the signal.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::config::{GatewayConfig, Mode};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use hermes_shared::auth::Authenticator;
use hermes_shared::ids::now_millis;
use hermes_shared::metrics::Metrics;
use hermes_shared::registry::RegistryKind;
use hermes_shared::registry::{GatewayRecord, Registry, heartbeat_interval, refresh};
use hermes_shared::router::GatewayClient;
use hermes_shared::router::{LocalGateway, NEW_GATEWAY_GRACE, Router};
use hermes_shared::wire::{
    CONNECTIONS_PATH, DELIVER_BATCH_MAX, DELIVER_BATCH_PATH, DELIVER_PATH, DELIVER_STREAM_PATH,
    REGISTRY_PATH,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deliver::Deliveries;
use crate::hub::SessionHub;
use crate::internal::ServedRegistry;
use crate::routes::Routes;
use crate::state::Gateway;
use crate::{
    Error, Result, access_log, admin, admin_metrics, browser_client, close, internal, standalone,
    stray_upgrade, stream, upgrade,
};

/// Where a started gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub public: SocketAddr,
    pub internal: SocketAddr,
}

/// A listening socket with room for `backlog` pending connections (std's `bind` gives 128,
/// which a reconnect storm overflows: dropped SYNs come back only after a 1 s retransmit).
fn bind(addr: SocketAddr, backlog: usize) -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let open = || -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    open().map_err(|source| Error::Bind { addr, source })
}

/// Runs a gateway until SIGTERM/SIGINT and a completed drain.
pub async fn run(config: GatewayConfig) -> Result<()> {
    let public_listener = bind(config.listen, config.listen_backlog)?;
    set_user_timeout(
        &public_listener,
        config.limits.ping_interval + config.limits.pong_timeout,
    );
    let internal_listener = bind(config.internal_listen, config.listen_backlog)?;
    let bound = Bound {
        public: public_listener.local_addr()?,
        internal: internal_listener.local_addr()?,
    };
    let internal_url = config.internal_url.clone().unwrap_or_else(|| {
        let mut addr = bound.internal;
        if addr.ip().is_unspecified() {
            tracing::warn!("HERMES_INTERNAL_URL is not set and the internal listener is on all interfaces; other processes will be told 127.0.0.1");
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    });

    let metrics = Arc::new(Metrics::new());
    let registry = hermes_shared::registry::connect(
        &config.registry,
        &config.internal_secret,
        config.deliver_timeout,
        metrics.clone(),
    )
    .await?;
    // The embedded memory registry is served to other processes (development clusters).
    let served = matches!(config.registry, RegistryKind::Memory).then(|| registry.clone());
    let hub = Arc::new(SessionHub::new(metrics.clone(), config.dedup));
    let auth = Arc::new(Authenticator::new(
        config.auth.clone(),
        registry.clone(),
        metrics.clone(),
    ));
    let client = GatewayClient::new(
        &config.internal_secret,
        config.deliver_timeout,
        metrics.clone(),
    )?
    .with_transport(config.deliver_transport);
    let deliveries = Arc::new(Deliveries::new(hub.clone(), auth.clone(), metrics.clone()));
    let local = LocalGateway {
        gateway_id: config.gateway_id.clone(),
        delivery: deliveries.clone(),
    };
    let router = Router::new(registry.clone(), client, Some(local), metrics.clone())
        .with_history(config.history, config.deliver_timeout)
        .with_registry_ttl(config.registry_ttl);
    let routes = Routes::new(config.routes.clone(), &config.stage, metrics.clone());
    let record = GatewayRecord {
        gateway_id: config.gateway_id.clone(),
        internal_url,
        started_at: now_millis(),
    };
    let gw = Arc::new(Gateway {
        config,
        metrics,
        registry,
        hub,
        auth,
        deliveries,
        router,
        routes,
        record,
        ready: AtomicBool::new(false),
        accepting: AtomicBool::new(false),
        draining: CancellationToken::new(),
        stopping: CancellationToken::new(),
        unremoved: parking_lot::Mutex::new(Vec::new()),
    });

    if served.is_some() {
        admit_at_once(&gw).await?;
    }
    // A served registry is this process's own, new and empty: nothing to reap in it.
    let reap_first = served.is_none();
    let public = public_server(gw.clone(), public_listener)?;
    let internal = internal_server(gw.clone(), internal_listener, served)?;
    let public_handle = public.handle();
    let internal_handle = internal.handle();
    let public_task = tokio::spawn(public);
    let internal_task = tokio::spawn(internal);

    announce(&gw, bound);

    let heartbeat_stop = CancellationToken::new();
    let mut heartbeat = tokio::spawn(heartbeat(gw.clone(), heartbeat_stop.clone(), reap_first));
    let signal = hermes_shared::process::shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        () = &mut signal => {}
        r = public_task => { tracing::error!(result = ?r, "the public server stopped"); }
    }
    let deadline = Instant::now() + gw.config.shutdown_grace;
    tracing::info!(sockets = gw.hub.len(), "draining");
    gw.set_ready(false);
    gw.draining.cancel();
    public_handle.pause().await;
    let drained = tokio::time::timeout_at(deadline, drain(&gw)).await.is_ok();
    // The closed sockets' `$disconnect` events, delivered within the grace period.
    if let Some(routes) = &gw.routes {
        let left = routes
            .drained(deadline.saturating_duration_since(Instant::now()))
            .await;
        if left > 0 {
            tracing::error!(
                left,
                "$disconnect events not delivered when the grace period ended"
            );
        }
    }
    // The heartbeat refreshed the rows of the sockets still open throughout the drain. A
    // refresh in flight is let finish (until the deadline), so that none of its writes
    // lands after the gateway row's delete.
    heartbeat_stop.cancel();
    if tokio::time::timeout_at(deadline, &mut heartbeat)
        .await
        .is_err()
    {
        heartbeat.abort();
    }
    // The gateway row, and whatever rows a failed delete left behind (sockets still open
    // when the grace ended, a delete the registry did not take).
    if let Err(error) = reap_own_rows(&gw, Reap::AtExit).await {
        tracing::warn!(%error, "cannot remove this gateway's rows; a reap or their TTL will");
    }
    gw.stopping.cancel();
    // The public server, then the internal one (its /readyz and /metrics answer until the
    // sockets are over), and nothing is waited for past the deadline: a connection still
    // open then (its peer holds it without reading) is dropped with the process, rather
    // than holding it for actix's own shutdown timeout (30 s), or for ever, as when the
    // internal server was never told to stop because the public one was still stopping.
    let stopped = tokio::time::timeout_at(deadline, async {
        public_handle.stop(true).await;
        internal_handle.stop(true).await;
        let _ = internal_task.await;
    })
    .await
    .is_ok();
    if !stopped {
        tracing::warn!("connections were still open when the grace period ended; exiting");
    }
    tracing::info!(drained, stopped, "stopped");
    Ok(())
}

/// Prints where the gateway listens (one parseable line on stdout) and, in standalone
/// mode, how to use it.
fn announce(gw: &Gateway, bound: Bound) {
    println!(
        "hermes-gateway listening public=http://{} internal=http://{}",
        bound.public, bound.internal
    );
    tracing::info!(
        gateway_id = %gw.record.gateway_id,
        public = %bound.public,
        internal = %bound.internal,
        stage = %gw.config.stage,
        "gateway started"
    );
    if gw.config.mode == Mode::Standalone {
        let key = if gw.config.admin_key_generated {
            gw.config.admin_key.clone()
        } else {
            "$HERMES_ADMIN_KEY".to_owned()
        };
        println!();
        println!("  Hermes standalone is running.");
        println!("  Demo page:     http://{}/", bound.public);
        println!(
            "  WebSocket:     ws://{}/{}?token=<JWT>",
            bound.public, gw.config.stage
        );
        if gw.config.admin_key_generated {
            println!("  Admin key:     {key}   (printed once; set HERMES_ADMIN_KEY to choose it)");
        }
        println!("  Publish one:");
        println!(
            "    curl -X POST http://{}/v1/publish -H \"Authorization: Bearer {key}\" \\\n      -d '{{\"user_id\":\"ops\",\"room_id\":\"demo\",\"data\":{{\"type\":\"greeting\",\"text\":\"hello\"}}}}'",
            bound.internal
        );
        println!();
    }
}

fn public_server(gw: Arc<Gateway>, listener: TcpListener) -> Result<actix_web::dev::Server> {
    let standalone = gw.config.mode == Mode::Standalone;
    let serve_client = gw.config.serve_client;
    let workers = gw.config.workers;
    let data = web::Data::new(gw);
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024))
            .wrap(from_fn(access_log::log_request));
        if serve_client {
            app = app
                .route("/hermes.js", web::get().to(browser_client::hermes_js))
                .route("/hermes.mjs", web::get().to(browser_client::hermes_mjs));
        }
        if standalone {
            app = app.route("/", web::get().to(standalone::index)).service(
                web::resource("/demo/token")
                    .wrap(from_fn(stray_upgrade::refuse))
                    .route(web::post().to(standalone::demo_token)),
            );
        }
        app.route("/{stage}", web::get().to(upgrade::websocket))
            .route(
                "/{stage}",
                web::method(actix_web::http::Method::OPTIONS).to(upgrade::preflight),
            )
    })
    .workers(workers)
    .disable_signals()
    .client_request_timeout(Duration::from_secs(10))
    .listen(listener)?
    .run();
    Ok(server)
}

/// The largest body the internal listener reads for a message of at most
/// `max_message_bytes` (its fields and JSON escapes besides): twice that and 64 KiB.
pub(crate) fn admin_body_limit(max_message_bytes: usize) -> usize {
    max_message_bytes * 2 + 64 * 1024
}

fn internal_server(
    gw: Arc<Gateway>,
    listener: TcpListener,
    served: Option<Arc<dyn Registry>>,
) -> Result<actix_web::dev::Server> {
    let body_limit = admin_body_limit(gw.config.limits.max_message_bytes);
    let data = web::Data::new(gw);
    let served = web::Data::new(ServedRegistry(served));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(served.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .wrap(from_fn(stray_upgrade::refuse))
            .wrap(from_fn(admin_metrics::count_admin_request))
            .wrap(from_fn(access_log::log_request))
            .route("/metrics", web::get().to(internal::metrics))
            .route("/healthz", web::get().to(internal::healthz))
            .route("/readyz", web::get().to(internal::readyz))
            .route(DELIVER_PATH, web::post().to(internal::deliver))
            .route(DELIVER_STREAM_PATH, web::get().to(stream::deliver_stream))
            .service(
                web::resource(DELIVER_BATCH_PATH)
                    .app_data(web::PayloadConfig::new(body_limit * DELIVER_BATCH_MAX))
                    .route(web::post().to(internal::deliver_batch)),
            )
            .route(
                &format!("{CONNECTIONS_PATH}/{{id}}"),
                web::get().to(internal::connection),
            )
            .route(REGISTRY_PATH, web::post().to(internal::registry))
            .route("/v1/tokens", web::post().to(admin::create_token))
            .route(
                "/v1/tokens/{room_id}/{user_id}",
                web::delete().to(admin::delete_token),
            )
            .route("/v1/publish", web::post().to(admin::publish))
            .service(
                web::resource(["/@connections/{id}", "/{stage}/@connections/{id}"])
                    .route(web::post().to(admin::post_to_connection))
                    .route(web::get().to(admin::get_connection))
                    .route(web::delete().to(admin::delete_connection)),
            )
    })
    .workers(1)
    // Deliver streams pipeline small answer frames: none may wait for the ACK of the one
    // before (Nagle's algorithm against the router's delayed ACK).
    .tcp_nodelay(true)
    // Longer than the router client's idle timeout (`GatewayClient`, 60 s): the client always
    // drops an idle connection before the server can close it under a request in flight.
    .keep_alive(Duration::from_secs(INTERNAL_KEEP_ALIVE_SECS))
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Bounds how long the kernel keeps a connection whose written data stays unacknowledged,
/// or whose peer's receive window stays shut, to `timeout` (`TCP_USER_TIMEOUT`, set on the
/// listener: accepted connections inherit it, at no cost per connection); then the
/// connection fails and is dropped. A peer that vanished, or that holds its buffers and
/// the connection's full, cannot be reached by anything the gateway writes (the close
/// timeout's abort is noticed only when the connection's write buffer has room), so this
/// is what ends it, no sooner than the heartbeat would have declared it dead.
fn set_user_timeout(listener: &TcpListener, timeout: Duration) {
    if let Err(error) = socket2::SockRef::from(listener).set_tcp_user_timeout(Some(timeout)) {
        tracing::warn!(%error, "cannot set TCP_USER_TIMEOUT on the public listener");
    }
}

/// Keep-alive of the internal listener, seconds.
pub const INTERNAL_KEEP_ALIVE_SECS: u64 = 120;

/// A gateway that serves its own embedded registry (standalone, or `serve` with
/// `HERMES_REGISTRY=memory`) writes its row before it serves anything, and accepts sockets
/// and is ready from then on. [`NEW_GATEWAY_GRACE`] is there for routers in other
/// processes that may hold a gateway list read before the row existed; but every list of
/// this registry is read from this process, which has the row before it answers any
/// read. So the banner is printed when the first upgrade can succeed.
async fn admit_at_once(gw: &Gateway) -> Result<()> {
    let (ttl, row_ttl) = (gw.config.registry_ttl, gw.config.registry_row_ttl);
    (gw.registry)
        .refresh(&gw.record, ttl, &gw.hub.holdings(), row_ttl)
        .await?;
    gw.set_accepting();
    gw.set_ready(true);
    Ok(())
}

/// How soon a failed heartbeat is tried again.
const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);

/// Writes this gateway's heartbeat row every [`heartbeat_interval`] until `stop`, which
/// comes after the drain, and with it the rows whose turn it is to be written again
/// ([`refresh`]; all of them on the first pass and after the row may have lapsed). Before
/// its first row, it deletes the rows an earlier process under the same gateway id left
/// (a crash, then a restart with the same host name): once this id is alive again, they
/// would look alive too. Unless [`admit_at_once`] admitted it, the gateway accepts sockets
/// and is ready [`NEW_GATEWAY_GRACE`] after the first success.
async fn heartbeat(gw: Arc<Gateway>, stop: CancellationToken, reap_first: bool) {
    let (ttl, row_ttl) = (gw.config.registry_ttl, gw.config.registry_row_ttl);
    let period = refresh::row_period(row_ttl);
    let mut tick = tokio::time::interval(heartbeat_interval(ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let mut admission = None;
    let mut reaped = !reap_first;
    // The last successful pass: its wall-clock time (the rows' turns are in wall-clock
    // time) and its instant (how long ago it was).
    let mut last_ok: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !reaped {
            match reap_own_rows(&gw, Reap::EarlierRun).await {
                Ok(()) => reaped = true,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "cannot check for rows of an earlier run");
                    tick.reset_after(HEARTBEAT_RETRY.min(heartbeat_interval(ttl)));
                    continue;
                }
            }
        }
        let (now_ms, now) = (now_millis(), Instant::now());
        let rows = match last_ok {
            Some((after_ms, at)) if !refresh::rewrite_all(now - at, ttl) => {
                gw.hub.holdings_due(after_ms, now_ms, period)
            }
            _ => gw.hub.holdings(),
        };
        // The deletes that failed before go with the pass, under the same keep-alive: many
        // of them (sockets closed during an outage) must not hold up the gateway row.
        let refresh = async {
            gw.registry.refresh(&gw.record, ttl, &rows, row_ttl).await?;
            crate::session::retry_removals(&gw).await;
            Ok::<(), hermes_shared::Error>(())
        };
        let result = while_refreshing(refresh, &mut tick, || async {
            if let Err(error) = gw.registry.upsert_gateway(&gw.record, ttl).await {
                tracing::warn!(%error, "cannot write the gateway row during a long refresh");
            }
        })
        .await;
        match result {
            Ok(()) => {
                last_ok = Some((now_ms, now));
                if failures > 0 {
                    tracing::info!("registry reachable again");
                }
                failures = 0;
                if gw.is_accepting() {
                    gw.set_ready(true);
                } else if admission.is_none() {
                    // Routers that send to every listed gateway list this one only after
                    // its row exists: hold no socket before they all can have seen it. In
                    // a task of its own, so that the next heartbeats are not held up.
                    let gw = gw.clone();
                    admission = Some(tokio::spawn(async move {
                        tokio::time::sleep(NEW_GATEWAY_GRACE).await;
                        gw.set_accepting();
                        gw.set_ready(true);
                    }));
                }
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "registry heartbeat failed");
                // Try again within a second: rows may expire during an outage of the
                // registry, and routers hold back for `router::REGISTRY_RECOVERY_GRACE`
                // after one, long enough for this heartbeat to write them again.
                tick.reset_after(HEARTBEAT_RETRY.min(heartbeat_interval(ttl)));
                // Rows expire after the TTL: stop claiming readiness well before.
                if failures >= 2 {
                    gw.set_ready(false);
                }
            }
        }
    }
    if let Some(admission) = admission {
        admission.abort();
    }
}

/// Whose rows a gateway reaps under its own id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reap {
    /// Before its first heartbeat: an earlier process with the same id that did not exit
    /// cleanly (its rows would look alive again under this process's heartbeat).
    EarlierRun,
    /// After its drain: sockets still open when the grace ended, deletes that failed.
    AtExit,
}

/// Deletes the rows that the per-gateway index names under this gateway's id, and says so
/// when there were any.
async fn reap_own_rows(gw: &Gateway, when: Reap) -> hermes_shared::Result<()> {
    let reaped = gw.registry.reap_gateway(&gw.record.gateway_id).await?;
    let rows = reaped.rooms + reaped.users + reaped.connections;
    let (rooms, users, connections) = (reaped.rooms, reaped.users, reaped.connections);
    match when {
        Reap::AtExit if rows > 0 => {
            tracing::info!(rooms, users, connections, "deleted the rows left at exit");
        }
        Reap::EarlierRun if rows > 0 || reaped.gateway_row => tracing::warn!(
            rooms,
            users,
            connections,
            "deleted the rows an earlier run of this gateway id left"
        ),
        _ => {}
    }
    Ok(())
}

/// Awaits a heartbeat's `refresh`, calling `keep_alive` (which writes the gateway row) on
/// every tick that passes meanwhile. A refresh of many rows against a slow cluster can
/// outlast several intervals; the gateway row, which is what says "alive", must still be
/// written every interval, or routers would take a gateway that is only slow to refresh for
/// dead (see [`hermes_shared::registry::HEARTBEATS_PER_TTL`]).
async fn while_refreshing<T, K: Future<Output = ()>>(
    refresh: impl Future<Output = T>,
    tick: &mut tokio::time::Interval,
    mut keep_alive: impl FnMut() -> K,
) -> T {
    tokio::pin!(refresh);
    loop {
        tokio::select! {
            biased;
            result = &mut refresh => return result,
            _ = tick.tick() => keep_alive().await,
        }
    }
}

/// Closes every socket with 1012, spread over the drain window, and waits for them.
async fn drain(gw: &Gateway) {
    let sockets = gw.hub.all();
    if !sockets.is_empty() {
        // Socket i closes at i/n of the window: the last one before the window ends.
        let step = gw.config.drain / u32::try_from(sockets.len()).unwrap_or(u32::MAX);
        let start = Instant::now();
        for (i, conn) in sockets.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep_until(start + step * u32::try_from(i).unwrap_or(u32::MAX)).await;
            }
            conn.close(close::SERVICE_RESTART, "service restart");
        }
    }
    gw.hub.wait_empty().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// More pending connections than std's backlog of 128 all complete their handshake
    /// before anything is accepted (a dropped SYN would come back only after 1 s).
    #[tokio::test]
    async fn the_listener_queues_as_many_pending_connections_as_configured() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 1024).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connects = (0..400).map(|_| tokio::net::TcpStream::connect(addr));
        let all = futures_util::future::join_all(connects);
        let streams = tokio::time::timeout(Duration::from_millis(800), all)
            .await
            .expect("every connect completes without a SYN retransmit");
        assert!(streams.iter().all(Result::is_ok));
        drop(listener);
    }

    /// A refresh that outlasts several heartbeat intervals (thousands of rows against a slow
    /// cluster) still has the gateway row written every interval: routers would otherwise
    /// take the gateway for dead once the row's TTL ran out in the middle of the refresh.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_longer_than_the_interval_still_writes_the_gateway_row_every_interval() {
        let ttl = Duration::from_secs(3);
        let interval = heartbeat_interval(ttl);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let started = Instant::now();
        // The refresh itself writes the gateway row first, then takes 5 intervals more.
        let written = parking_lot::Mutex::new(vec![started]);
        let refresh = tokio::time::sleep(interval * 5 + interval / 2);
        while_refreshing(refresh, &mut tick, || async {
            written.lock().push(Instant::now());
        })
        .await;
        let written = written.into_inner();
        assert_eq!(written.len(), 6, "one write per interval: {written:?}");
        for pair in written.windows(2) {
            assert!(pair[1] - pair[0] <= interval, "{written:?}");
        }
        // Never more than one interval without a write: the row (TTL three intervals)
        // never comes near expiring.
        let last = *written.last().expect("writes");
        assert!(Instant::now() - last <= interval, "{written:?}");
    }
}
