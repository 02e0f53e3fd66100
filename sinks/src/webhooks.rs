//! Alert delivery to webhooks: the registry (persisted as one JSON file),
//! the filter, the signature and one delivery with its retries.
//!
//! The engine feeds each webhook the alert events of the alerts topic in
//! order and keeps its cursor (see the `stockflow` crate's `webhooks`
//! module); this module knows nothing of topics.
//!
//! A delivery is a `POST` of the alert event's JSON with
//! `X-Stockflow-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with
//! the secret>`, `X-Stockflow-Delivery: <webhook id>:<event id>` (the same on
//! every attempt, and after a restart: receivers de-duplicate on it) and
//! `X-Stockflow-Event: <event type>`. A transport error or a non-2xx answer
//! is retried with exponential backoff up to [`Policy::max_attempts`]; then
//! the delivery is recorded as failed and the next event goes.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The HTTP client deliveries go through.
pub type Client = reqwest::blocking::Client;

/// A client for deliveries: no redirects (a delivery goes where it was
/// registered to go), HTTPS through rustls.
pub fn client() -> Result<Client, reqwest::Error> {
    reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build()
}

/// The alert kinds a webhook can ask for.
pub const KINDS: [&str; 2] = ["low_stock", "out_of_stock"];

/// A registered webhook. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Server-assigned id (`wh_<hex>`).
    pub id: String,
    /// Where deliveries are posted (`http` or `https`).
    pub url: String,
    /// Only alerts of this tenant are delivered.
    pub tenant: String,
    /// Only these alert kinds (`low_stock`, `out_of_stock`).
    pub kinds: Vec<String>,
    /// HMAC key of the signatures; never shown back.
    pub secret: String,
    /// When it was registered (RFC 3339).
    pub created_at: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("tenant", &self.tenant)
            .field("kinds", &self.kinds)
            .field("secret", &"<hidden>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl Webhook {
    /// True when `event` (an alert event) is for this webhook.
    pub fn wants(&self, event: &serde_json::Value) -> bool {
        event.get("tenant").and_then(|t| t.as_str()) == Some(self.tenant.as_str())
            && event.get("kind").and_then(|k| k.as_str()).is_some_and(|kind| self.kinds.iter().any(|k| k == kind))
    }
}

/// Checks a webhook URL: absolute, `http` or `https`, with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not an absolute URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}`: only http and https URLs are delivered to, not {}", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(|h| h.is_empty()) {
        return Err(format!("`{url}` names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}`: credentials in the URL are not accepted; the signature authenticates deliveries"));
    }
    Ok(())
}

/// Checks the alert kinds of a registration.
pub fn check_kinds(kinds: &[String]) -> Result<(), String> {
    if kinds.is_empty() {
        return Err("kinds: give at least one of low_stock, out_of_stock".into());
    }
    match kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        Some(kind) => Err(format!("kinds: `{kind}` is not one of low_stock, out_of_stock")),
        None => Ok(()),
    }
}

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Checks a signing secret.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN || secret.len() > 256 {
        return Err(format!("secret: between {MIN_SECRET_LEN} and 256 bytes, got {}", secret.len()));
    }
    Ok(())
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` keyed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// How deliveries are retried.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further one (at most 1 min).
    pub first_backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_attempts: 6, first_backoff: Duration::from_millis(500), timeout: Duration::from_secs(10) }
    }
}

/// What happened to one event for one webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `X-Stockflow-Delivery`.
    pub delivery_id: String,
    /// The alert event's id.
    pub event_id: String,
    /// The alert event's type.
    pub event_type: String,
    /// `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last answer, if there was one.
    pub response_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
}

/// An alert event on its way to a webhook.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The event's id.
    pub id: &'a str,
    /// The event's type.
    pub event_type: &'a str,
    /// The JSON body, as written to the alerts topic.
    pub body: &'a [u8],
}

/// Posts `body` to `webhook` until a 2xx answer or `policy.max_attempts`;
/// `stopping` cuts the retries short (the delivery is then not recorded:
/// it is attempted again after a restart). `on_attempt` sees each attempt's
/// outcome (`delivered`, `retry` or `failed`).
pub fn deliver(
    client: &Client,
    webhook: &Webhook,
    event: Outgoing<'_>,
    policy: &Policy,
    stopping: &dyn Fn() -> bool,
    on_attempt: &mut dyn FnMut(&str),
) -> Option<Delivery> {
    let Outgoing { id: event_id, event_type, body } = event;
    let delivery_id = format!("{}:{event_id}", webhook.id);
    let signature = sign(webhook.secret.as_bytes(), body);
    let mut delivery = Delivery {
        delivery_id: delivery_id.clone(),
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        status: "failed".into(),
        attempts: 0,
        response_status: None,
        error: None,
    };
    let mut backoff = policy.first_backoff;
    loop {
        delivery.attempts += 1;
        let answer = client
            .post(&webhook.url)
            .timeout(policy.timeout)
            .header("content-type", "application/json")
            .header("x-stockflow-signature", &signature)
            .header("x-stockflow-delivery", &delivery_id)
            .header("x-stockflow-event", event_type)
            .body(body.to_vec())
            .send();
        match answer {
            Ok(response) if response.status().is_success() => {
                delivery.status = "delivered".into();
                delivery.response_status = Some(response.status().as_u16());
                delivery.error = None;
                on_attempt("delivered");
                return Some(delivery);
            }
            Ok(response) => {
                delivery.response_status = Some(response.status().as_u16());
                delivery.error = Some(format!("answered {}", response.status()));
            }
            Err(error) => {
                delivery.response_status = None;
                delivery.error = Some(error.to_string());
            }
        }
        if delivery.attempts >= policy.max_attempts {
            on_attempt("failed");
            return Some(delivery);
        }
        on_attempt("retry");
        // Sleep in slices so that a shutdown is not held up by a long backoff.
        let until = std::time::Instant::now() + backoff;
        while std::time::Instant::now() < until {
            if stopping() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - std::time::Instant::now()));
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// The registered webhooks, persisted in one JSON file (written to a
/// temporary file, synced, then renamed over the old one).
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    hooks: Mutex<BTreeMap<String, Webhook>>,
}

/// A registry file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("webhook registry {path}: {detail}")]
pub struct RegistryError {
    path: String,
    detail: String,
}

impl Registry {
    /// Opens (or starts) the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let error = |detail: String| RegistryError { path: path.display().to_string(), detail };
        let hooks = match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<Webhook> = serde_json::from_slice(&bytes).map_err(|e| error(format!("not a webhook list: {e}")))?;
                list.into_iter().map(|h| (h.id.clone(), h)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(error(e.to_string())),
        };
        Ok(Registry { path: path.to_path_buf(), hooks: Mutex::new(hooks) })
    }

    /// Every webhook, by id.
    pub fn list(&self) -> Vec<Webhook> {
        self.hooks.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// One webhook.
    pub fn get(&self, id: &str) -> Option<Webhook> {
        self.hooks.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Adds a webhook and persists the registry.
    pub fn add(&self, webhook: Webhook) -> Result<(), RegistryError> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        hooks.insert(webhook.id.clone(), webhook.clone());
        if let Err(error) = self.save(&hooks) {
            hooks.remove(&webhook.id);
            return Err(error);
        }
        Ok(())
    }

    /// Removes a webhook; `false` if there was none.
    pub fn remove(&self, id: &str) -> Result<bool, RegistryError> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(removed) = hooks.remove(id) else { return Ok(false) };
        if let Err(error) = self.save(&hooks) {
            hooks.insert(id.to_owned(), removed);
            return Err(error);
        }
        Ok(true)
    }

    fn save(&self, hooks: &BTreeMap<String, Webhook>) -> Result<(), RegistryError> {
        let list: Vec<&Webhook> = hooks.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).expect("webhooks serialize");
        write_atomically(&self.path, &bytes).map_err(|e| RegistryError { path: self.path.display().to_string(), detail: e.to_string() })
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename:
/// a crash leaves the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        // The rename itself is durable once the directory is synced.
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_rfc_4231_hmac() {
        // RFC 4231, test case 2.
        assert_eq!(sign(b"Jefe", b"what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let hook = Webhook {
            id: "wh_1".into(),
            url: "https://example.com/h".into(),
            tenant: "acme".into(),
            kinds: vec!["low_stock".into()],
            secret: "s3cr3t-value-0123456789".into(),
            created_at: "2026-11-30T00:00:00.000Z".into(),
        };
        let shown = format!("{hook:?}");
        assert!(!shown.contains("s3cr3t") && shown.contains("<hidden>") && shown.contains("wh_1"), "{shown}");
        let config =
            crate::clickhouse::Config { url: "http://ch:8123".into(), database: "stockflow".into(), user: "u".into(), password: "pa55word-xyz".into() };
        assert!(!format!("{config:?}").contains("pa55word"), "{config:?}");
    }

    #[test]
    fn registrations_are_checked() {
        assert!(check_url("https://hooks.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:9000/alerts").is_ok());
        assert!(check_url("ftp://example.com/").unwrap_err().contains("only http and https"));
        assert!(check_url("example.com/hook").unwrap_err().contains("not an absolute URL"));
        assert!(check_url("http://user:pw@example.com/").unwrap_err().contains("credentials"));
        assert!(check_kinds(&["low_stock".into()]).is_ok());
        assert!(check_kinds(&["low".into()]).unwrap_err().contains("`low`"));
        assert!(check_kinds(&[]).is_err());
        assert!(check_secret("short").is_err());
    }

    #[test]
    fn the_registry_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhooks.json");
        let registry = Registry::open(&path).unwrap();
        let hook = Webhook {
            id: "wh_1".into(),
            url: "http://127.0.0.1:1/".into(),
            tenant: "t".into(),
            kinds: vec!["low_stock".into()],
            secret: "0123456789abcdef".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        registry.add(hook.clone()).unwrap();
        assert_eq!(Registry::open(&path).unwrap().list(), vec![hook]);
        assert!(registry.remove("wh_1").unwrap());
        assert!(!registry.remove("wh_1").unwrap());
        assert!(Registry::open(&path).unwrap().list().is_empty());
        let event = serde_json::json!({"tenant": "t", "kind": "low_stock"});
        let hook = Webhook { kinds: vec!["out_of_stock".into()], ..registry_hook() };
        assert!(!hook.wants(&event));
        assert!(Webhook { kinds: vec!["low_stock".into()], ..registry_hook() }.wants(&event));
    }

    fn registry_hook() -> Webhook {
        Webhook { id: "x".into(), url: "http://h/".into(), tenant: "t".into(), kinds: vec![], secret: String::new(), created_at: String::new() }
    }
}
