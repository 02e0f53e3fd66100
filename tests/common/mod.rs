//! What the tests share: [`eventually`] (wait until a check holds, never a
//! bare sleep), [`Client`] (HTTP with per-request timeouts), [`Server`] (a
//! server's settings and its start-up), and the Kafka helpers in [`kafka`].

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod kafka;

use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use stockflow::config::ServeArgs;
use stockflow::server::{self, Running};
use stockflow::settings::Settings;

/// How long a test waits for any one answer before it fails, naming what it
/// waited for (a hang then reads as a failure with its place, not as a test
/// killed by the runner's timeout).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long a test waits for a condition that the engine reaches by itself
/// (caught up, a view showing an event, a sink in sync) unless it says otherwise:
/// generous, the machine is shared.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// `future`, or a panic naming `what` when it takes longer than [`PATIENCE`].
pub async fn within<T>(what: impl std::fmt::Display, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

/// An HTTP client whose connects and reads are bounded by [`PATIENCE`] (a
/// server that stops answering fails the request, not the runner's timeout).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(PATIENCE)
        .read_timeout(PATIENCE)
        .build()
        .expect("an HTTP client")
}

/// An HTTP client of one running server; tests add their own helpers in
/// `impl Client` blocks of their own. Every request it sends is bounded by
/// [`PATIENCE`] and names its method and path when it is not answered.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(running: &Running) -> Client {
        Client::at(&format!("http://{}", running.addr))
    }

    /// A client of the server at `base` (`http://host:port`).
    pub fn at(base: &str) -> Client {
        Client {
            http: http_client(),
            base: base.to_owned(),
        }
    }

    /// Sends a request (a JSON body if given); answers the status, the
    /// content type and the body's text.
    pub async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let what = format!("{method} {path}");
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = within(&what, request.send())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = within(&what, response.text())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        (status, content_type, text)
    }

    /// Sends a request (a JSON body if given); answers the status and the
    /// body as JSON (or as a JSON string when it is not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, text) = self.exchange(method, path, body, headers).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body), &[])
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    /// GETs `path` until `done` holds for its status and body (within
    /// [`EVENTUALLY`]); answers that body.
    pub async fn get_until(&self, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        eventually(format!("GET {path}"), EVENTUALLY, async || {
            let (status, body) = self.get(path).await;
            if done(status, &body) {
                Ok(body)
            } else {
                Err(Observed(format!("{status} {body}")))
            }
        })
        .await
    }

    /// Waits until `/ready` answers 200.
    pub async fn ready(&self) {
        self.get_until("/ready", |status, _| status == 200).await;
    }
}

/// An observation for a panic message, cut to a readable length.
pub struct Observed(pub String);

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 2_000;
        match self.0.char_indices().nth(MAX) {
            Some((cut, _)) => write!(f, "{}... ({} bytes)", &self.0[..cut], self.0.len()),
            None => f.write_str(&self.0),
        }
    }
}

/// A server to start: its settings, changed by the test, and the ways the
/// tests start it (started, ready, caught up).
pub struct Server {
    pub settings: Settings,
}

impl Server {
    /// A server on the embedded log in `dir`: [`local_settings`].
    pub fn local(dir: &Path, workers: usize) -> Server {
        Server::of(local_settings(dir, workers))
    }

    pub fn of(settings: Settings) -> Server {
        Server { settings }
    }

    /// These settings, changed by `change`.
    pub fn with(mut self, change: impl FnOnce(&mut Settings)) -> Server {
        change(&mut self.settings);
        self
    }

    /// Started (listening), not waited for otherwise.
    pub async fn start(&self) -> Running {
        within("the server starts", server::start(&self.settings))
            .await
            .unwrap_or_else(|e| panic!("the server starts: {e:#}"))
    }

    /// Started, and `/ready` answers 200: its topics exist and it caught up.
    pub async fn start_ready(&self) -> Running {
        let running = self.start().await;
        Client::new(&running).ready().await;
        running
    }

    /// Started, and its store has caught up with the log.
    pub async fn start_caught_up(&self) -> Running {
        let running = self.start().await;
        eventually("the server catches up", EVENTUALLY, async || {
            if running.store.caught_up() {
                Ok(())
            } else {
                Err(running.store.readiness())
            }
        })
        .await;
        running
    }
}

/// Shuts `running` down and waits until it has stopped.
pub async fn stop(running: Running) {
    running.shutdown.trigger();
    within("the server stops", running.wait())
        .await
        .unwrap_or_else(|e| panic!("the server stops: {e:#}"));
}

/// What a check of [`eventually`] answers: settled (with a value), or not yet
/// (with what it observed, for the panic message on timeout).
pub trait Settled {
    type Value;
    fn settled(self) -> Result<Self::Value, String>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

/// `Err(observed)`: not yet, and `observed` is what the panic names on timeout.
impl<T, E: std::fmt::Debug> Settled for Result<T, E> {
    type Value = T;
    fn settled(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// The pauses between two checks of [`eventually`]: short at first, then
/// doubling up to a tenth of a second.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(5))
    }

    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(Duration::from_millis(100));
        pause
    }
}

/// Checks until `check` settles (`true`, `Some(value)` or `Ok(value)`) and
/// answers its value; after `timeout`, panics naming `what` and the last
/// observation (an `Err`'s value, or `false`/`None`). A check that hangs
/// counts against the timeout too.
pub async fn eventually<S: Settled>(
    what: impl std::fmt::Display,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> S,
) -> S::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Backoff::new();
    let mut last = String::from("(not checked)");
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(outcome) => match outcome.settled() {
                Ok(value) => return value,
                Err(observed) => last = observed,
            },
            Err(_) => panic!("{what}: not within {timeout:?} (a check hung); last seen: {last}"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// [`eventually`] for a test's plain threads (no runtime): the same checks,
/// pauses and panic.
pub fn eventually_blocking<S: Settled>(
    what: impl std::fmt::Display,
    timeout: Duration,
    mut check: impl FnMut() -> S,
) -> S::Value {
    let deadline = std::time::Instant::now() + timeout;
    let mut backoff = Backoff::new();
    loop {
        let last = match check().settled() {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if std::time::Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}; last seen: {last}");
        }
        std::thread::sleep(backoff.next());
    }
}

/// A free loopback port (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings of a server on the embedded log in `dir`, listening on a free
/// loopback port, with short epochs: the defaults otherwise, resolved as the
/// command line would resolve them (sources `inventory.events` and
/// `order.events`, commands on `inventory.commands`).
pub fn local_settings(dir: &Path, workers: usize) -> Settings {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().expect("an address")),
        data_dir: Some(dir.to_path_buf()),
        workers: Some(workers),
        epoch_ms: Some(5),
        epoch_max_events: Some(10_000),
        partitions: Some(3),
        ..Default::default()
    };
    Settings::resolve(&args, None).expect("valid settings")
}

/// Appends JSON events to `topic_name` of the embedded log (3 partitions
/// if it is new), each under its key; returns an `after` token covering them.
pub fn append_events<'a>(
    running: &Running,
    topic_name: &str,
    events: impl IntoIterator<Item = (String, &'a Value)>,
) -> String {
    let topic = running.log.topic(topic_name, 3).unwrap();
    let mut tokens = Vec::new();
    for (key, event) in events {
        let (partition, offset) = topic
            .append(
                key.as_bytes(),
                event.to_string().as_bytes(),
                1_700_000_000_000,
            )
            .unwrap();
        tokens.push(format!("{topic_name}:{partition}:{offset}"));
    }
    tokens.join(",")
}
