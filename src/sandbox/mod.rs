//! Stateful emulators of the providers, served by `rosterd sandbox` and `rosterd demo`, and used
//! by the integration tests.
//!
//! Every emulator is an axum router over shared state, served on 127.0.0.1 through a listener
//! whose connections can be cut mid-request, so tests can inject real connection resets.
//! Adding a provider's emulator is its module, an [`Emulator`] impl and one line in
//! [`emulators!`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::Kind;

pub mod bitrix24;
pub mod cometchat;
pub mod tencent;
pub mod waha;

/// What the sandbox needs to know of one emulator besides its `new(State)`, `router()` and
/// `state()`: its kind, seed type, where it listens, and the made-up credentials it accepts. A
/// new emulator implements this and takes one line in [`emulators!`].
pub trait Emulator {
    /// The seed and dump of the emulator's world.
    type State: Clone
        + Default
        + PartialEq
        + std::fmt::Debug
        + Serialize
        + serde::de::DeserializeOwned;
    const KIND: Kind;
    /// The path its routes start with (`/v3` for CometChat), part of the base URL.
    const PREFIX: &'static str;
    /// The port `rosterd sandbox` uses, matching the sample `manifests/rosterd.yaml`.
    const FIXED_PORT: u16;
    /// The credentials of the seed, one `name: value` per app, for `rosterd sandbox` to print.
    fn credentials(state: &Self::State, base_url: &str) -> Vec<String>;
}

/// The emulators' wall clock: anchored once per process and advanced by tokio's clock, so a
/// test on paused time moves the emulators' rate windows, buckets and mute ends with it, as a
/// client's [`crate::ctx::Clock`] moves.
pub fn now() -> std::time::SystemTime {
    static ANCHOR: std::sync::OnceLock<(std::time::SystemTime, std::time::Instant)> =
        std::sync::OnceLock::new();
    let (wall, at) =
        *ANCHOR.get_or_init(|| (std::time::SystemTime::now(), std::time::Instant::now()));
    wall + tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(at)
}

/// The sandbox's emulators, each as `field: EmulatorType`: the field names the emulator in
/// [`SandboxState`] (the seed file's top-level key) and in [`Sandbox`]. They start in this
/// order, which is the order `rosterd sandbox` and `rosterd demo` print them in.
macro_rules! emulators {
    ($($field:ident: $emu:ty),* $(,)?) => {
        /// The seed (and dump) of every emulator, as one YAML or JSON document.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SandboxState {
            $(#[serde(default)] pub $field: <$emu as Emulator>::State,)*
        }

        /// The running emulators. Dropping it does not stop them; call [`Sandbox::shutdown`].
        pub struct Sandbox {
            $(pub $field: $emu,)*
            endpoints: Vec<Endpoint>,
            shutdown: CancellationToken,
            tracker: TaskTracker,
        }

        impl Sandbox {
            /// Start every emulator on 127.0.0.1, seeded from `state`. `shutdown` cancelled
            /// stops them.
            pub async fn start(
                state: SandboxState,
                ports: Ports,
                shutdown: CancellationToken,
            ) -> anyhow::Result<Sandbox> {
                let tracker = TaskTracker::new();
                let mut endpoints = Vec::new();
                $(let $field = {
                    let (listener, endpoint) = bind::<$emu>(&state.$field, ports).await?;
                    let emulator = <$emu>::new(state.$field);
                    serve_on(listener, emulator.router(), endpoint.kind, &shutdown, &tracker);
                    endpoints.push(endpoint);
                    emulator
                };)*
                tracker.close();
                Ok(Sandbox { $($field,)* endpoints, shutdown, tracker })
            }

            /// The current state of every emulator.
            pub fn dump(&self) -> SandboxState {
                SandboxState { $($field: self.$field.state(),)* }
            }
        }
    };
}

emulators! {
    cometchat: cometchat::CometChatEmulator,
    waha: waha::WahaEmulator,
    tencent: tencent::TencentEmulator,
    bitrix24: bitrix24::Bitrix24Emulator,
}

impl SandboxState {
    /// Read a state file: JSON when it ends in `.json`, YAML otherwise.
    pub fn load(path: &Path) -> anyhow::Result<SandboxState> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sandbox state {}", path.display()))?;
        Self::parse(&text, path.extension().is_some_and(|e| e == "json"))
            .with_context(|| format!("invalid sandbox state {}", path.display()))
    }

    /// Parse a state document (YAML is a superset of the JSON the dump writes).
    pub fn parse(text: &str, json: bool) -> anyhow::Result<SandboxState> {
        if json {
            Ok(serde_json::from_str(text)?)
        } else {
            crate::config::yaml::from_str(text)
                .map_err(|e| anyhow::anyhow!("line {}, column {}: {}", e.line, e.column, e.message))
        }
    }

    /// The state as pretty JSON, for dumps.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the state is plain data")
    }
}

/// Where the emulators listen: ephemeral ports, or each emulator's fixed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    fixed: bool,
}

impl Ports {
    /// Every emulator on an ephemeral port (tests, `rosterd demo`).
    pub const EPHEMERAL: Ports = Ports { fixed: false };
    /// The fixed ports `rosterd sandbox` uses ([`Emulator::FIXED_PORT`]).
    pub const FIXED: Ports = Ports { fixed: true };

    fn of<E: Emulator>(self) -> u16 {
        if self.fixed { E::FIXED_PORT } else { 0 }
    }
}

/// One running emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// What to put in an instance's `base_url`.
    pub base_url: String,
    /// The made-up credentials the emulator accepts, one `name: value` per app, printed by
    /// `rosterd sandbox` so a user can point a real instance at it. Never real secrets.
    pub credentials: Vec<String>,
}

impl Sandbox {
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The base URL of a provider kind's emulator, if the sandbox runs one.
    pub fn base_url(&self, kind: Kind) -> Option<&str> {
        self.endpoints
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.base_url.as_str())
    }

    /// Stop accepting, let requests in flight finish, and wait for the servers to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.wait().await;
    }
}

/// Listen for one emulator on 127.0.0.1: the listener and the endpoint it will serve.
async fn bind<E: Emulator>(
    state: &E::State,
    ports: Ports,
) -> anyhow::Result<(TcpListener, Endpoint)> {
    let kind = E::KIND;
    let port = ports.of::<E>();
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port} for the {kind} emulator"))?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}{}", E::PREFIX);
    let credentials = E::credentials(state, &base_url);
    let endpoint = Endpoint {
        kind,
        addr,
        base_url,
        credentials,
    };
    Ok((listener, endpoint))
}

/// Serve one emulator's routes until `shutdown` is cancelled, as a task of `tracker`.
fn serve_on(
    listener: TcpListener,
    router: Router,
    kind: Kind,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let token = shutdown.clone();
    let app = router.into_make_service_with_connect_info::<Conn>();
    tracker.spawn(async move {
        let served = axum::serve(KillableListener(listener), app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(%kind, error = %e, "sandbox emulator stopped");
        }
    });
}

/// Serve every emulator until `shutdown` is cancelled, seeded from `state_file` (or the demo
/// world when none is given), printing each base URL and the keys it accepts to `out` first.
pub async fn serve(
    state_file: Option<&Path>,
    ports: Ports,
    out: &mut dyn io::Write,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = match state_file {
        Some(p) => SandboxState::load(p)?,
        None => default_state()?,
    };
    let sandbox = Sandbox::start(state, ports, shutdown.clone()).await?;
    for e in sandbox.endpoints() {
        writeln!(out, "{}\t{}", e.kind, e.base_url)?;
        for c in &e.credentials {
            writeln!(out, "  {c}")?;
        }
    }
    out.flush()?;
    shutdown.cancelled().await;
    sandbox.shutdown().await;
    Ok(())
}

/// `rosterd sandbox [--state FILE]`: the emulators on their fixed ports, base URLs on stdout.
pub async fn run_sandbox(
    state: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut stdout = io::stdout();
    serve(state.as_deref(), Ports::FIXED, &mut stdout, shutdown).await
}

/// The seed `rosterd sandbox` uses without `--state`: the demo world of `manifests/`.
pub fn default_state() -> anyhow::Result<SandboxState> {
    SandboxState::parse(DEMO_STATE, false).context("the built-in sandbox state")
}

/// The demo world, compiled in so `rosterd sandbox` and `rosterd demo` work from any folder.
pub const DEMO_STATE: &str = include_str!("../../manifests/sandbox-state.yaml");

/// An injected fault: what happens and when.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub when: FaultWhen,
    /// Only requests that change state are hit (reads go through).
    #[serde(default)]
    pub writes_only: bool,
}

impl Fault {
    /// The next `n` requests get `kind`.
    pub fn next(n: u32, kind: FaultKind) -> Self {
        Fault {
            kind,
            when: FaultWhen::Next(n),
            writes_only: false,
        }
    }
    /// Each request gets `kind` with probability `p`.
    pub fn sometimes(p: f64, kind: FaultKind) -> Self {
        Fault {
            kind,
            when: FaultWhen::Probability(p),
            writes_only: false,
        }
    }
    pub fn writes_only(mut self) -> Self {
        self.writes_only = true;
        self
    }
}

/// A fixed-window request limit, e.g. 10 per `1s` or 500 per `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl RateLimit {
    pub fn per_second(requests: u32) -> Self {
        RateLimit {
            requests,
            per: Duration::from_secs(1),
        }
    }
    pub fn per_minute(requests: u32) -> Self {
        RateLimit {
            requests,
            per: Duration::from_secs(60),
        }
    }
}

/// The requests counted in the current window of a [`RateLimit`] (wall-clock windows, as the
/// services count them).
#[derive(Debug, Default)]
pub struct Window(std::sync::Mutex<(u64, u32)>);

/// What a [`Window`] decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub admitted: bool,
    /// Requests left in the window after this one.
    pub remaining: u32,
    /// Unix milliseconds now and when the window ends.
    pub now_ms: u64,
    pub reset_ms: u64,
}

impl Window {
    /// Forget what was counted (a new limit was set).
    pub fn reset(&self) {
        *self.lock() = (0, 0);
    }

    /// Count one request against `limit`, unless the window is already full.
    pub fn admit(&self, limit: RateLimit) -> Admission {
        let now_ms = now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let window_ms = (limit.per.as_millis() as u64).max(1);
        let idx = now_ms / window_ms;
        let mut w = self.lock();
        if w.0 != idx {
            *w = (idx, 0);
        }
        let admitted = w.1 < limit.requests;
        if admitted {
            w.1 += 1;
        }
        Admission {
            admitted,
            remaining: limit.requests.saturating_sub(w.1),
            now_ms,
            reset_ms: (idx + 1) * window_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u32)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The injected faults of one emulator. "Next N" faults count down and then go; probabilistic
/// ones roll for every request they match.
#[derive(Debug, Default)]
pub struct Faults(std::sync::Mutex<Vec<Fault>>);

impl Faults {
    pub fn inject(&self, fault: Fault) {
        self.lock().push(fault);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The fault that takes a request, if any. `is_write`: the request changes state.
    pub fn take(&self, is_write: bool) -> Option<FaultKind> {
        use rand::Rng as _;
        let mut faults = self.lock();
        let mut hit = None;
        for f in faults.iter_mut() {
            if f.writes_only && !is_write {
                continue;
            }
            match &mut f.when {
                FaultWhen::Next(n) if *n > 0 => {
                    *n -= 1;
                    hit = Some(f.kind);
                    break;
                }
                FaultWhen::Probability(p) if rand::rng().random_bool(p.clamp(0.0, 1.0)) => {
                    hit = Some(f.kind);
                    break;
                }
                _ => {}
            }
        }
        faults.retain(|f| !matches!(f.when, FaultWhen::Next(0)));
        hit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // A test that panicked while holding the lock must not hide the faults from the next.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status (5xx with the provider's error envelope; 502-504 as an edge
    /// proxy would, without one). The request is not carried out.
    Status(u16),
    /// Drop the connection without an answer (RST). The request is not carried out.
    Reset,
    /// Answer normally after this delay.
    Slow(#[serde(with = "humantime_serde")] Duration),
}

/// When an injected fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultWhen {
    /// The next N matching requests.
    Next(u32),
    /// Each matching request with this probability.
    Probability(f64),
}

/// Per-connection info handed to handlers: the switch that cuts this connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub(crate) kill: Arc<AtomicBool>,
}

impl Connected<IncomingStream<'_, KillableListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        Conn {
            kill: stream.io().kill.clone(),
        }
    }
}

/// A TCP listener whose connections fail every read and write once their switch is thrown.
pub struct KillableListener(TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        KillableStream {
                            inner,
                            kill: Arc::new(AtomicBool::new(false)),
                        },
                        addr,
                    );
                }
                // Out of descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A TCP stream with a kill switch (see [`KillableListener`]).
pub struct KillableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillableStream {
    fn killed(&self) -> Option<io::Error> {
        if self.kill.load(Ordering::SeqCst) {
            // Zero linger makes the close an RST, which is what a reset looks like to a client.
            let _ = self.inner.set_zero_linger();
            Some(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "sandbox: injected connection reset",
            ))
        } else {
            None
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
