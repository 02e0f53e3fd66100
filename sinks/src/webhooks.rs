//! Alert delivery to webhooks: the registry (persisted as one JSON file),
//! the filter, the signature, the networks a delivery may reach and one
//! delivery with its retries.
//! Long because a delivery's checks (filter, signature, networks) and its retries are one contract.
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
//!
//! Where a delivery may go is checked twice: at registration
//! ([`check_url`], [`Networks::check_host`]) and at every connection, on the
//! addresses the host resolves to then ([`client`]'s resolver; an IP
//! literal is checked before the request). Link-local and cloud metadata
//! addresses are refused always ([`Refusal`]); the operator's lists narrow
//! the rest. A refused delivery is not retried: it is recorded as failed at
//! once, its attempt counted as `refused`.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use ipnet::IpNet;
pub use reqwest::Url;

/// The HTTP client deliveries go through.
pub type Client = reqwest::Client;

/// Most host names resolved at once (each lookup holds a blocking thread).
const RESOLVING_AT_ONCE: usize = 8;

/// A client for deliveries: no redirects (a delivery goes where it was
/// registered to go), no proxy from the environment (the addresses checked
/// are the ones connected to), HTTPS through rustls, and a resolver that
/// drops the addresses `networks` refuses (none left: the request fails with
/// a [`Refusal`] in its error chain, see [`refusal_of`]).
pub fn client(networks: Arc<Networks>) -> Result<Client, reqwest::Error> {
    let resolver = Arc::new(CheckedResolver {
        networks,
        at_once: Arc::new(tokio::sync::Semaphore::new(RESOLVING_AT_ONCE)),
    });
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(resolver)
        .build()
}

/// Host names that are cloud metadata services (compared without case and
/// without a trailing dot).
pub const METADATA_NAMES: [&str; 1] = ["metadata.google.internal"];

/// Cloud metadata addresses outside the link-local ranges: AWS's IPv6
/// instance metadata and Alibaba Cloud's (169.254.169.254, the usual one, is
/// link-local).
pub const METADATA_ADDRESSES: [IpAddr; 2] = [
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Why a delivery may not go to an address or host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 169.254.0.0/16 or fe80::/10: refused always.
    #[error("{0} is link-local (169.254.0.0/16, fe80::/10); webhooks never go there")]
    LinkLocal(IpAddr),
    /// A cloud metadata service: refused always.
    #[error("`{0}` is a cloud metadata address; webhooks never go there")]
    Metadata(String),
    /// In a network of `--webhook-deny-network`.
    #[error("{address} is in {network}, a denied network (--webhook-deny-network)")]
    Denied {
        /// The address.
        address: IpAddr,
        /// The denied network holding it.
        network: IpNet,
    },
    /// `--webhook-allow-network` is set and names no network holding it.
    #[error("{0} is in none of the allowed networks (--webhook-allow-network)")]
    NotAllowed(IpAddr),
}

impl Refusal {
    /// Short class, for logs and metrics: `link_local`, `metadata`, `denied`, `not_allowed`.
    pub fn class(&self) -> &'static str {
        match self {
            Refusal::LinkLocal(_) => "link_local",
            Refusal::Metadata(_) => "metadata",
            Refusal::Denied { .. } => "denied",
            Refusal::NotAllowed(_) => "not_allowed",
        }
    }
}

/// The networks deliveries may reach, beyond the ranges refused always.
/// A denied network wins over an allowed one; with no allowed network,
/// every address that is not refused or denied is allowed (loopback too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks {
    /// When not empty, only addresses in one of these.
    pub allow: Vec<IpNet>,
    /// Never addresses in one of these.
    pub deny: Vec<IpNet>,
}

impl Networks {
    /// Whether a delivery may connect to `address`.
    pub fn check(&self, address: IpAddr) -> Result<(), Refusal> {
        // ::ffff:a.b.c.d reaches a.b.c.d: judged as that.
        let plain = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        if METADATA_ADDRESSES.contains(&plain)
            || plain == IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))
        {
            return Err(Refusal::Metadata(plain.to_string()));
        }
        let link_local = match plain {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local {
            return Err(Refusal::LinkLocal(plain));
        }
        if let Some(network) = self
            .deny
            .iter()
            .find(|n| n.contains(&plain) || n.contains(&address))
        {
            return Err(Refusal::Denied {
                address: plain,
                network: *network,
            });
        }
        if !self.allow.is_empty()
            && !self
                .allow
                .iter()
                .any(|n| n.contains(&plain) || n.contains(&address))
        {
            return Err(Refusal::NotAllowed(plain));
        }
        Ok(())
    }

    /// Whether a delivery may go to `host` as written in a URL: a metadata
    /// name is refused, an IP literal is checked; other names are checked
    /// when they are resolved.
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_NAMES.contains(&name.as_str()) {
            return Err(Refusal::Metadata(host.to_owned()));
        }
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(address) => self.check(address),
            Err(_) => Ok(()),
        }
    }
}

/// Parses a network of an allow or deny list: CIDR (`10.0.0.0/8`,
/// `fd00::/8`) or one address (`192.0.2.7`, a /32 or /128).
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|network| network.trunc())
        .map_err(|_| {
            format!(
                "`{text}` is not a network (CIDR such as 10.0.0.0/8 or fd00::/8, or one address)"
            )
        })
}

/// The [`Refusal`] that stopped a request, if one did (the resolver's
/// error, somewhere in the chain of reqwest's).
pub fn refusal_of(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        cause = error.source();
    }
    None
}

/// Resolves with the system resolver, then keeps only the addresses the
/// networks allow: the check happens on the addresses connected to, so a
/// name that resolves somewhere else at delivery time is still refused.
struct CheckedResolver {
    networks: Arc<Networks>,
    at_once: Arc<tokio::sync::Semaphore>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(resolve_checked(
            self.networks.clone(),
            self.at_once.clone(),
            name.as_str().to_owned(),
        ))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn resolve_checked(
    networks: Arc<Networks>,
    at_once: Arc<tokio::sync::Semaphore>,
    host: String,
) -> Result<reqwest::dns::Addrs, BoxError> {
    networks.check_host(&host)?;
    let resolved: Vec<SocketAddr> = {
        let _turn = at_once.acquire().await?;
        tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
    };
    let mut refused = None;
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|address| match networks.check(address.ip()) {
            Ok(()) => true,
            Err(refusal) => {
                refused.get_or_insert(refusal);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some(refusal)) => Err(Box::new(refusal)),
        _ => Ok(Box::new(allowed.into_iter())),
    }
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
            && event
                .get("kind")
                .and_then(|k| k.as_str())
                .is_some_and(|kind| self.kinds.iter().any(|k| k == kind))
    }
}

/// Checks a webhook URL: absolute, `http` or `https`, with a host written
/// out (`http:///hook` is not read as host `hook`), no credentials; then
/// its host against `networks` (see [`Networks::check_host`]).
pub fn check_url(url: &str, networks: &Networks) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not an absolute URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "`{url}`: only http and https URLs are delivered to, not {}",
            parsed.scheme()
        ));
    }
    // The URL standard forgives `http:///hook`, `http:/hook` and `http:hook`
    // as `http://hook/`: a host that was never written is not guessed.
    let authority = url
        .trim_start()
        .get(parsed.scheme().len() + 1..)
        .and_then(|rest| rest.strip_prefix("//"));
    if authority.is_none_or(|a| a.is_empty() || a.starts_with(['/', '?', '#']))
        || parsed.host_str().is_none_or(|h| h.is_empty())
    {
        return Err(format!(
            "`{url}` names no host (write http(s)://host[:port]/path)"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}`: credentials in the URL are not accepted; the signature authenticates deliveries"));
    }
    let host = parsed.host_str().unwrap_or_default();
    networks
        .check_host(host)
        .map_err(|refusal| format!("`{url}`: {refusal}"))?;
    Ok(parsed)
}

/// Checks the alert kinds of a registration.
pub fn check_kinds(kinds: &[String]) -> Result<(), String> {
    if kinds.is_empty() {
        return Err("kinds: give at least one of low_stock, out_of_stock".into());
    }
    match kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        Some(kind) => Err(format!(
            "kinds: `{kind}` is not one of low_stock, out_of_stock"
        )),
        None => Ok(()),
    }
}

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Checks a signing secret.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN || secret.len() > 256 {
        return Err(format!(
            "secret: between {MIN_SECRET_LEN} and 256 bytes, got {}",
            secret.len()
        ));
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

/// How webhooks are delivered: retries, where they may go, how many a
/// tenant may register.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further one (at most 1 min).
    pub first_backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Most webhooks one tenant may register.
    pub per_tenant: usize,
    /// The networks deliveries may reach.
    pub networks: Arc<Networks>,
}

/// Default of [`Policy::per_tenant`] (`--webhooks-per-tenant`).
pub const DEFAULT_PER_TENANT: usize = 20;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 6,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            per_tenant: DEFAULT_PER_TENANT,
            networks: Arc::default(),
        }
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

/// Posts `body` to `webhook` until a 2xx answer or `policy.max_attempts`.
/// `on_attempt` sees each attempt's outcome (`delivered`, `retry`,
/// `failed`, or `refused`: the target's address is not one deliveries may
/// reach, see [`Networks`]; not retried). Dropping the future cuts the
/// retries short: nothing is recorded, and the event is attempted again
/// after a restart.
pub async fn deliver(
    client: &Client,
    webhook: &Webhook,
    event: Outgoing<'_>,
    policy: &Policy,
    on_attempt: &mut (dyn FnMut(&str) + Send),
) -> Delivery {
    let Outgoing {
        id: event_id,
        event_type,
        body,
    } = event;
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
    let backoff = crate::backoff::Backoff::new(policy.first_backoff, crate::backoff::WEBHOOK_CAP);
    loop {
        delivery.attempts += 1;
        // An IP literal is connected to without resolving: checked here.
        let literal = reqwest::Url::parse(&webhook.url)
            .ok()
            .and_then(|url| url.host_str().map(|h| policy.networks.check_host(h)));
        if let Some(Err(refusal)) = literal {
            delivery.error = Some(format!("refused: {refusal}"));
            on_attempt("refused");
            return delivery;
        }
        let answer = client
            .post(&webhook.url)
            .timeout(policy.timeout)
            .header("content-type", "application/json")
            .header("x-stockflow-signature", &signature)
            .header("x-stockflow-delivery", &delivery_id)
            .header("x-stockflow-event", event_type)
            .body(body.to_vec())
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                delivery.status = "delivered".into();
                delivery.response_status = Some(response.status().as_u16());
                delivery.error = None;
                on_attempt("delivered");
                return delivery;
            }
            Ok(response) => {
                delivery.response_status = Some(response.status().as_u16());
                delivery.error = Some(format!("answered {}", response.status()));
            }
            Err(error) => {
                delivery.response_status = None;
                if let Some(refusal) = refusal_of(&error) {
                    delivery.error = Some(format!("refused: {refusal}"));
                    on_attempt("refused");
                    return delivery;
                }
                delivery.error = Some(error.to_string());
            }
        }
        if delivery.attempts >= policy.max_attempts {
            on_attempt("failed");
            return delivery;
        }
        on_attempt("retry");
        tokio::time::sleep(backoff.delay(delivery.attempts - 1)).await;
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
        let error = |detail: String| RegistryError {
            path: path.display().to_string(),
            detail,
        };
        let hooks = match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<Webhook> = serde_json::from_slice(&bytes)
                    .map_err(|e| error(format!("not a webhook list: {e}")))?;
                list.into_iter().map(|h| (h.id.clone(), h)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(error(e.to_string())),
        };
        Ok(Registry {
            path: path.to_path_buf(),
            hooks: Mutex::new(hooks),
        })
    }

    /// Every webhook, by id.
    pub fn list(&self) -> Vec<Webhook> {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// One webhook.
    pub fn get(&self, id: &str) -> Option<Webhook> {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
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
        let Some(removed) = hooks.remove(id) else {
            return Ok(false);
        };
        if let Err(error) = self.save(&hooks) {
            hooks.insert(id.to_owned(), removed);
            return Err(error);
        }
        Ok(true)
    }

    fn save(&self, hooks: &BTreeMap<String, Webhook>) -> Result<(), RegistryError> {
        let list: Vec<&Webhook> = hooks.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).expect("webhooks serialize");
        crate::fs::write_atomically(&self.path, &bytes).map_err(|e| RegistryError {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_rfc_4231_hmac() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
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
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<hidden>") && shown.contains("wh_1"),
            "{shown}"
        );
        let config = crate::clickhouse::Config {
            url: "http://ch:8123".into(),
            database: "stockflow".into(),
            user: "u".into(),
            password: "pa55word-xyz".into(),
        };
        assert!(!format!("{config:?}").contains("pa55word"), "{config:?}");
    }

    #[test]
    fn registrations_are_checked() {
        let open = Networks::default();
        assert!(check_url("https://hooks.example.com/x", &open).is_ok());
        assert!(check_url("http://127.0.0.1:9000/alerts", &open).is_ok());
        assert!(check_url("ftp://example.com/", &open)
            .unwrap_err()
            .contains("only http and https"));
        assert!(check_url("example.com/hook", &open)
            .unwrap_err()
            .contains("not an absolute URL"));
        assert!(check_url("http://user:pw@example.com/", &open)
            .unwrap_err()
            .contains("credentials"));
        for hostless in ["http:///hook", "http:/hook", "http:hook", "HTTP:///hook"] {
            assert!(
                check_url(hostless, &open)
                    .unwrap_err()
                    .contains("names no host"),
                "{hostless}"
            );
        }
        assert!(check_kinds(&["low_stock".into()]).is_ok());
        assert!(check_kinds(&["low".into()]).unwrap_err().contains("`low`"));
        assert!(check_kinds(&[]).is_err());
        assert!(check_secret("short").is_err());
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_whatever_the_lists_say() {
        let everything = Networks {
            allow: vec![
                parse_network("0.0.0.0/0").unwrap(),
                parse_network("::/0").unwrap(),
            ],
            deny: vec![],
        };
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.0.1:8080/",
            "http://[fe80::1]/hook",
            "http://[febf::1]/hook",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let error = check_url(url, &everything).unwrap_err();
            assert!(
                error.contains("link-local") || error.contains("cloud metadata"),
                "{url}: {error}"
            );
        }
        assert!(
            check_url("http://[fec0::1]/", &everything).is_ok(),
            "fe80::/10 ends at febf"
        );
        assert!(check_url("http://169.255.0.1/", &everything).is_ok());
        assert_eq!(
            Networks::default().check("127.0.0.1".parse().unwrap()),
            Ok(()),
            "loopback is allowed by default"
        );
    }

    #[test]
    fn deny_wins_over_allow_and_allow_narrows() {
        let networks = Networks {
            allow: vec![
                parse_network("127.0.0.1").unwrap(),
                parse_network("10.0.0.0/8").unwrap(),
            ],
            deny: vec![parse_network("10.9.0.0/16").unwrap()],
        };
        assert_eq!(networks.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(networks.check("10.1.2.3".parse().unwrap()), Ok(()));
        let refusal = networks.check("10.9.1.1".parse().unwrap()).unwrap_err();
        assert_eq!(
            (refusal.class(), refusal.to_string().as_str()),
            (
                "denied",
                "10.9.1.1 is in 10.9.0.0/16, a denied network (--webhook-deny-network)"
            )
        );
        assert_eq!(
            networks
                .check("127.0.0.2".parse().unwrap())
                .unwrap_err()
                .class(),
            "not_allowed"
        );
        assert_eq!(
            networks
                .check("::ffff:10.9.0.1".parse().unwrap())
                .unwrap_err()
                .class(),
            "denied",
            "an IPv4-mapped address is judged as IPv4"
        );
        assert_eq!(
            parse_network(" 10.1.2.3/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_network("10.0.0.0/33")
            .unwrap_err()
            .contains("is not a network"));
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
        let hook = Webhook {
            kinds: vec!["out_of_stock".into()],
            ..registry_hook()
        };
        assert!(!hook.wants(&event));
        assert!(Webhook {
            kinds: vec!["low_stock".into()],
            ..registry_hook()
        }
        .wants(&event));
    }

    fn registry_hook() -> Webhook {
        Webhook {
            id: "x".into(),
            url: "http://h/".into(),
            tenant: "t".into(),
            kinds: vec![],
            secret: String::new(),
            created_at: String::new(),
        }
    }
}
