//! The HTTP listener: the web page, its files and the WebSocket at `/ws`, over plain
//! HTTP or over TLS (see [`crate::tls`]).
//!
//! The accept loop is our own rather than `warp::serve`, for three reasons: warp 0.4
//! has no TLS of its own; the WebSocket route needs the peer's address for login
//! throttling, which we attach to each request as [`PeerAddr`]; and every connection
//! gets deadlines for its TLS handshake and its request headers, so a client that
//! sends a byte a second holds nothing for long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use warp::Filter;

use crate::connection::Context;
use crate::tls::Tls;
use crate::transport::{FrameReader, FrameWriter};

/// The address a request came from, attached to every request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves HTTP (or HTTPS with `tls`) on `listener` until `stop` turns true, then lets
/// requests in flight finish (at most `grace`).
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Option<Tls>>,
    context: Context,
    sessions: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let deadline = context.settings.handshake_timeout;
    let routes = routes(context, sessions);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                crate::server::pause_after_accept_error("http", &e).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let service = PeerService { inner: warp::service(routes.clone()), peer };
        let service = hyper_util::service::TowerToHyperService::new(service);
        let watcher = graceful.watcher();
        // The certificate in use now (a reload may have renewed it).
        let tls = tls.borrow().clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(deadline);
            let builder = builder.http1_only();
            let result = match tls {
                None => {
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(socket), service)).await
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(deadline, tls.acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service)).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "http connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Attaches the peer's address to each request, then hands it to the warp routes.
#[derive(Clone)]
struct PeerService<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> tower_service::Service<warp::http::Request<B>> for PeerService<S>
where
    S: tower_service::Service<warp::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: warp::http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(PeerAddr(self.peer));
        self.inner.call(request)
    }
}

/// `/ws` for sessions; `/metrics` (see [`crate::metrics`]); `/` and the client's
/// files for the page; 404 for anything else.
fn routes(
    context: Context,
    sessions: Arc<Semaphore>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static
{
    let max_frame = context.settings.max_frame as usize;
    let (hub, live) = (Arc::clone(&context.hub), context.live.clone());
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::ext::get::<PeerAddr>())
        .and_then(move |PeerAddr(peer): PeerAddr| {
            let hub = Arc::clone(&hub);
            let access = live.borrow().metrics;
            async move {
                if !access.allows(peer.ip()) {
                    return Err(warp::reject::not_found());
                }
                let text = crate::metrics::render(&hub.metrics(), hub.store().commit_latency());
                Ok(warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4; charset=utf-8"))
            }
        });
    let ws = warp::path("ws").and(warp::path::end()).and(warp::ws()).and(warp::ext::get::<PeerAddr>()).map(
        move |ws: warp::ws::Ws, PeerAddr(peer): PeerAddr| {
            let context = context.clone();
            let sessions = Arc::clone(&sessions);
            ws.max_message_size(max_frame).max_frame_size(max_frame).on_upgrade(move |socket| async move {
                let (sink, stream) = socket.split();
                crate::server::spawn_session(
                    &context,
                    &sessions,
                    FrameReader::ws(stream),
                    FrameWriter::Ws(sink),
                    peer,
                );
            })
        },
    );
    // HEAD too: hyper sends its headers without the body.
    let read = || warp::get().or(warp::head()).unify();
    let index = warp::path::end().and(read()).map(|| crate::web::asset(""));
    let asset = warp::path::param::<String>()
        .and(warp::path::end())
        .and(read())
        .map(|name: String| crate::web::asset(&name));
    ws.or(metrics).or(index).or(asset).recover(|_rejection: warp::Rejection| async {
        Ok::<_, std::convert::Infallible>(warp::reply::with_status(
            "not found\n",
            warp::http::StatusCode::NOT_FOUND,
        ))
    })
}
