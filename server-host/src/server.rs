//! Listeners and the server's life cycle: bind, serve, shut down cleanly. The HTTP
//! side lives in [`crate::http`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use casataa_proto::message::CloseReason;
use casataa_proto::types::Role;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::connection::{self, Context};
use crate::files::Disk;
use crate::hub::Hub;
use crate::settings::Settings;
use crate::store::{self, Store};
use crate::tls::Tls;
use crate::transport::{FrameReader, FrameWriter};
use crate::{generate_passphrase, unix_millis};

/// A server whose listeners are bound.
#[derive(Debug)]
pub struct Bound {
    reloader: Reloader,
    context: Context,
    tcp: TcpListener,
    http: TcpListener,
    /// Where devices connect.
    pub tcp_addr: SocketAddr,
    /// Where browsers connect.
    pub http_addr: SocketAddr,
    /// The passphrase of the `admin` user, if this start created it.
    pub created_admin: Option<String>,
    /// HTTPS, when asked for.
    pub tls: Option<Tls>,
}

/// Opens the store (creating `admin` on first start) and binds both listeners.
pub async fn bind(settings: Settings) -> anyhow::Result<Bound> {
    use anyhow::Context as _;
    let store = Store::open(&settings.data_dir, unix_millis())
        .with_context(|| format!("cannot open the store in {}", settings.data_dir.display()))?;
    let tls = match &settings.tls {
        Some(source) => Some(
            crate::tls::load(source, &settings.data_dir, &crate::lan::certificate_names())
                .context("cannot set up HTTPS")?,
        ),
        None => None,
    };
    let created_admin = create_first_admin(&store, settings.kdf_iterations).await?;
    let hub = Hub::new(store).await.context("cannot load rooms")?;
    let tcp = TcpListener::bind(settings.tcp)
        .await
        .with_context(|| format!("cannot listen on {}", settings.tcp))?;
    let http = TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http))?;
    let tcp_addr = tcp.local_addr()?;
    let http_addr = http.local_addr()?;
    let disk = Disk::new(&settings.data_dir).context("cannot create the file areas")?;
    let settings = Arc::new(settings);
    let (settings_tx, live) = watch::channel(Arc::clone(&settings));
    let (tls_tx, _) = watch::channel(tls.clone());
    Ok(Bound {
        reloader: Reloader { settings: Arc::new(settings_tx), tls: Arc::new(tls_tx) },
        context: Context { hub, settings, live, disk },
        tcp,
        http,
        tcp_addr,
        http_addr,
        created_admin,
        tls,
    })
}

async fn create_first_admin(store: &Store, iterations: u32) -> anyhow::Result<Option<String>> {
    if store.read(store::user_count).await? > 0 {
        return Ok(None);
    }
    let passphrase = generate_passphrase();
    let secret = passphrase.clone();
    let (kdf, key) =
        tokio::task::spawn_blocking(move || store::new_credentials(&secret, iterations)).await??;
    let admin = casataa_proto::types::Name::new("admin").map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = unix_millis();
    match store.write(move |conn| store::add_user(conn, &admin, Role::Admin, &kdf, &key, now)).await {
        Ok(()) => Ok(Some(passphrase)),
        Err(store::StoreError::AlreadyExists) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Applies a new configuration to a running server (SIGHUP). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    settings: Arc<watch::Sender<Arc<Settings>>>,
    tls: Arc<watch::Sender<Option<Tls>>>,
}

impl Reloader {
    /// Applies `new` to the connections accepted from now on. Returns what could not
    /// be applied without a restart (addresses, the connection limit, the frame size,
    /// turning HTTPS on or off), or an error when the new certificate cannot be loaded
    /// (then nothing changes).
    pub fn apply(&self, new: Settings) -> anyhow::Result<Vec<String>> {
        let old = Arc::clone(&self.settings.borrow());
        let mut needs_restart = Vec::new();
        let mut new = new;
        if new.data_dir != old.data_dir {
            needs_restart.push("data directory".to_owned());
            new.data_dir = old.data_dir.clone();
        }
        if new.tcp != old.tcp {
            needs_restart.push("tcp".to_owned());
        }
        if new.http != old.http {
            needs_restart.push("http".to_owned());
        }
        if new.max_connections != old.max_connections {
            needs_restart.push("max_connections".to_owned());
            new.max_connections = old.max_connections;
        }
        if new.max_frame != old.max_frame {
            needs_restart.push("max_frame".to_owned());
            new.max_frame = old.max_frame;
        }
        match (&old.tls, &new.tls) {
            (Some(_), Some(source)) => {
                // Certificates are renewed: load the files again.
                let tls = crate::tls::load(source, &new.data_dir, &crate::lan::certificate_names())
                    .map_err(|e| anyhow::anyhow!("cannot reload the certificate: {e}"))?;
                self.tls.send_replace(Some(tls));
            }
            (None, None) => {}
            _ => {
                needs_restart.push("tls".to_owned());
                new.tls = old.tls.clone();
            }
        }
        self.settings.send_replace(Arc::new(new));
        Ok(needs_restart)
    }
}

impl Bound {
    /// Applies configuration changes while the server runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Starts announcing the server on the LAN, unless `mdns = false` or it listens
    /// on loopback only. A failure is logged, not fatal: the server works without.
    fn announce(&self) -> Option<crate::discovery::Announcer> {
        if !self.context.settings.mdns {
            return None;
        }
        let what = crate::discovery::Announcement {
            name: self.context.settings.server_name.clone(),
            tcp: self.tcp_addr,
            http: self.http_addr,
            https: self.tls.is_some(),
        };
        match crate::discovery::announce(&what) {
            Ok(announcer) => announcer,
            Err(e) => {
                tracing::warn!("cannot announce the server on the LAN (mDNS): {e}");
                None
            }
        }
    }

    /// The shared state (for tests and embedding).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.context.hub
    }

    /// Serves until `shutdown` completes, then stops accepting, closes every session
    /// and flushes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let announcer = self.announce();
        let Bound { context, tcp, http, reloader, .. } = self;
        let limit = Arc::new(Semaphore::new(context.settings.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);

        let tcp_task = tokio::spawn(accept_tcp(tcp, context.clone(), Arc::clone(&limit), stop_rx.clone()));
        let cleanup_task = tokio::spawn(clean_abandoned_uploads(context.clone(), stop_rx.clone()));
        let disabled_task = tokio::spawn(close_disabled_users(context.clone(), stop_rx.clone()));
        survive_file_size_limit();
        let http_task = tokio::spawn(crate::http::serve(
            http,
            reloader.tls.subscribe(),
            context.clone(),
            Arc::clone(&limit),
            stop_rx.clone(),
            Duration::from_secs(2),
        ));

        shutdown.await;
        tracing::info!("shutting down: no new connections, closing sessions");
        if let Some(announcer) = announcer {
            // Goodbyes first, so browsers drop the server before it stops answering.
            let _ = tokio::task::spawn_blocking(move || announcer.stop()).await;
        }
        let _ = stop_tx.send(true);
        let _ = tcp_task.await;
        let _ = cleanup_task.await;
        let _ = disabled_task.await;
        context.hub.close_all(CloseReason::Shutdown);
        // Sessions end once their goodbye is written; give them a moment.
        let all = u32::try_from(context.settings.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(5), limit.acquire_many(all)).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), http_task).await;
        context.hub.store().flush().await?;
        tracing::info!("store flushed; goodbye");
        Ok(())
    }
}

/// Closes the sessions of users disabled from the shell (`casataa-server user
/// disable`, another process writing the same store): checked every second.
async fn close_disabled_users(context: Context, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Ok(users) = context.hub.store().read(store::users).await else { continue };
        for (user, _, disabled) in users {
            if disabled && context.hub.close_user(&user, CloseReason::Disabled) > 0 {
                tracing::info!("closed the sessions of {user}, disabled from the shell");
            }
        }
    }
}

/// Deletes uploads nobody has continued for `partial_ttl`, now and then.
async fn clean_abandoned_uploads(context: Context, mut stop: watch::Receiver<bool>) {
    loop {
        let ttl = context.live.borrow().partial_ttl;
        let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let before = unix_millis().saturating_sub(ttl.as_millis() as u64);
        let store = context.hub.store();
        let Ok(ids) = store.read(move |conn| store::abandoned_uploads(conn, before)).await else { continue };
        for id in ids {
            let _ = std::fs::remove_file(context.disk.partial(id));
            if store.write(move |conn| store::delete_file(conn, id)).await.is_ok() {
                tracing::info!("removed abandoned upload {id}");
            }
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    context: Context,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                pause_after_accept_error("device", &e).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        // A fixed send buffer bounds the kernel memory of each connection, and lets a
        // client that stops reading show up as a stalled queue instead of vanishing
        // into megabytes of autotuned buffer.
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(context.settings.socket_send_buffer);
        let (read, write) = socket.into_split();
        let reader = FrameReader::tcp(read);
        let writer = FrameWriter::Tcp(write);
        spawn_session(&context, &limit, reader, writer, peer);
    }
}

/// After a failed accept (out of file descriptors and the like): log it and wait a
/// moment instead of spinning.
pub(crate) async fn pause_after_accept_error(listener: &str, error: &std::io::Error) {
    tracing::warn!("{listener} accept failed: {error}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Starts the session of an accepted connection, or refuses it when the server is
/// full.
pub(crate) fn spawn_session(
    context: &Context,
    limit: &Arc<Semaphore>,
    reader: FrameReader,
    writer: FrameWriter,
    peer: SocketAddr,
) {
    let context = context.for_new_connection();
    let totals = context.hub.totals();
    match Arc::clone(limit).try_acquire_owned() {
        Ok(permit) => {
            totals.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(connection::serve_holding(context, reader, writer, peer, permit));
        }
        Err(_) => {
            totals.refused_busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, "connection limit reached; refusing");
            tokio::spawn(connection::refuse_busy(writer));
        }
    }
}

/// A file-size limit (`ulimit -f`) reached while writing an upload must fail that
/// write (EFBIG, reported like a full disk) instead of killing the server, which is
/// SIGXFSZ's default. Listening for the signal replaces that default.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut signals) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::warn!("a write hit the file size limit; that transfer fails");
                }
            });
        }
    }
}

/// On every SIGHUP, builds the settings again with `load` (the config file and the
/// command line) and applies them; a config that does not load changes nothing.
pub fn reload_on_hangup(reloader: Reloader, load: impl Fn() -> anyhow::Result<Settings> + Send + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reloading the config needs a restart");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match load().and_then(|settings| reloader.apply(settings)) {
                    Ok(needs_restart) if needs_restart.is_empty() => {
                        tracing::info!("SIGHUP: config reloaded; it applies to new connections");
                    }
                    Ok(needs_restart) => tracing::warn!(
                        "SIGHUP: config reloaded for new connections, except {} (takes a restart)",
                        needs_restart.join(", ")
                    ),
                    Err(e) => tracing::error!("SIGHUP: config not reloaded, nothing changed: {e:#}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reloader, load);
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
