//! What the tests against a local (embedded-log) server share.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use stockflow::config::{ServeArgs, Settings};
use stockflow::server::Running;

/// How long a test waits for any one answer before it fails, naming what it
/// waited for (a hang then reads as a failure with its place, not as a test
/// killed by the runner's timeout).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `future`, or a panic naming `what` when it takes longer than [`PATIENCE`].
pub async fn within<T>(what: impl std::fmt::Display, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
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
        let http = reqwest::Client::builder()
            .connect_timeout(PATIENCE)
            .read_timeout(PATIENCE)
            .build()
            .expect("an HTTP client");
        Client {
            http,
            base: format!("http://{}", running.addr),
        }
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
        let text = within(&what, response.text())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
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
