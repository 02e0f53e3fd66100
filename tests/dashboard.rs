//! The dashboard at `/` in a real browser: a server with the demo generator
//! on (as `stockflow demo` runs it), and headless Chromium driven by
//! playwright-core from `tests/dashboard/dashboard.test.mjs`. The page shows
//! the demo's stock rows; a command that takes an item under its reorder
//! point shows its alert without a reload; the charts and the ingestion tiles
//! fill; a pasted API key is sent. Screenshots stay in `target/dashboard/`.
//!
//! Needs Node.js, Debian's `chromium` and playwright-core under the cache:
//! `scripts/services.sh` installs them. Missing, the test fails (it does not
//! skip) and says so.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{eventually, stop, Client, Observed, Server};

/// An item of our own, at a demo location, that the generator never touches.
const PROBE_SKU: &str = "DASH-PROBE-1";
const PROBE_LOCATION: &str = "madrid-centro";
/// Longest the browser script may take (it has its own, shorter, waits).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(420);

/// What the browser script needs, found or the reason it is not.
struct Tools {
    node: PathBuf,
    chromium: PathBuf,
    playwright_core: PathBuf,
}

impl Tools {
    /// `STOCKFLOW_CHROMIUM` (default `/usr/bin/chromium`), `node` on the
    /// PATH, and playwright-core in `STOCKFLOW_PLAYWRIGHT_CORE` or the cache
    /// `scripts/services.sh` installs it into.
    fn find() -> Tools {
        let chromium = PathBuf::from(
            std::env::var("STOCKFLOW_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        );
        let node = PathBuf::from("node");
        let cache = std::env::var("STOCKFLOW_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/stockflow")
            });
        let playwright_core = std::env::var("STOCKFLOW_PLAYWRIGHT_CORE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| cache.join("node/node_modules/playwright-core"));
        let mut missing = Vec::new();
        if !chromium.is_file() {
            missing.push(format!("no Chromium at {}", chromium.display()));
        }
        match Command::new(&node).arg("--version").output() {
            Ok(output) if output.status.success() => {}
            _ => missing.push("no `node` on the PATH".to_owned()),
        }
        if !playwright_core.join("package.json").is_file() {
            missing.push(format!(
                "no playwright-core in {}",
                playwright_core.display()
            ));
        }
        assert!(
            missing.is_empty(),
            "the dashboard test needs a browser: {}; run scripts/services.sh to install them",
            missing.join("; ")
        );
        Tools {
            node,
            chromium,
            playwright_core,
        }
    }
}

impl Client {
    /// Posts a command and waits until it is decided and accepted.
    async fn accepted(&self, path: &str, body: Value) {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, 202, "{path}: {answer}");
        let outcome = format!(
            "/v1/commands/{}?after={}&wait_ms=30000",
            answer["command_id"].as_str().unwrap(),
            answer["token"].as_str().unwrap()
        );
        let (status, outcome) = self.get(&outcome).await;
        assert_eq!(
            (status, outcome["status"].as_str()),
            (200, Some("accepted")),
            "{outcome}"
        );
    }

    /// Waits (generously: the machine may be busy) until `path` answers 200
    /// with `field` a non-empty array.
    async fn until_rows(&self, path: &str, field: &str) {
        eventually(
            format!("{path} having {field}"),
            Duration::from_secs(120),
            async || {
                let (status, answer) = self.get(path).await;
                let rows = answer[field].as_array().is_some_and(|r| !r.is_empty());
                if status == 200 && rows {
                    Ok(())
                } else {
                    Err(Observed(format!("{status} {answer}")))
                }
            },
        )
        .await
    }
}

/// `/` and every asset it names: served without a key, with their type,
/// `no-cache` and a policy that allows this origin only; nothing inline or
/// from elsewhere; an unknown asset is a 404 problem.
async fn check_assets(client: &Client) {
    let get = |path: String| {
        let request = client.http.get(format!("{}{path}", client.base));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers: std::collections::BTreeMap<String, String> = response
                .headers()
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            (status, headers, response.text().await.unwrap())
        }
    };
    let (status, headers, page) = get("/".into()).await;
    assert_eq!(
        (status, headers["content-type"].as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(
        !page.contains("<style") && !page.contains(" style=") && !page.contains("<script>"),
        "nothing inline: the policy forbids it"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    let mut assets: Vec<&str> = page
        .split("\"/dashboard/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assets.sort();
    assert_eq!(assets, ["app.css", "app.js", "favicon.svg"]);
    for (path, content_type) in [
        ("/".to_owned(), "text/html; charset=utf-8"),
        (
            "/dashboard/app.js".to_owned(),
            "text/javascript; charset=utf-8",
        ),
        ("/dashboard/app.css".to_owned(), "text/css; charset=utf-8"),
        ("/dashboard/favicon.svg".to_owned(), "image/svg+xml"),
    ] {
        let (status, headers, body) = get(path.clone()).await;
        assert_eq!(
            (status, headers["content-type"].as_str()),
            (200, content_type),
            "{path}"
        );
        assert!(!body.is_empty(), "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = &headers["content-security-policy"];
        assert!(
            policy.starts_with("default-src 'none'; script-src 'self'; style-src 'self';")
                && !policy.contains("unsafe"),
            "{path}: {policy}"
        );
    }
    let (status, headers, _) = get("/dashboard/app.js.map".into()).await;
    assert_eq!(
        (status, headers["content-type"].as_str()),
        (404, "application/problem+json")
    );
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs the browser script to its end (or kills it past `SCRIPT_TIMEOUT`);
/// answers whether it succeeded and what it printed.
fn run_script(tools: &Tools, base: &str, out: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/dashboard.test.mjs");
    let log_path = out.join("browser.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(&tools.node)
        .arg(&script)
        .args([base, PROBE_SKU, PROBE_LOCATION])
        .arg(out)
        .env("PLAYWRIGHT_CORE", &tools.playwright_core)
        .env("CHROMIUM", &tools.chromium)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting node");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let success = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        // Polling the child, not waiting for a condition: std's `wait` has no
        // timeout, and on one the script is killed and its log still returned.
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        success,
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_demo_live_and_a_new_alert_without_a_reload() {
    let tools = Tools::find();
    let dir = tempfile::tempdir().unwrap();
    let running = Server::local(dir.path(), 2)
        .with(|settings| settings.demo_rate = Some(100))
        .start()
        .await;
    let client = Client::new(&running);
    check_assets(&client).await;
    client.until_rows("/v1/stock?limit=1", "rows").await;
    client
        .until_rows("/v1/stock?tenant=andina&limit=1", "rows")
        .await;
    client
        .accepted(
            "/v1/items",
            json!({"sku": PROBE_SKU, "name": "Dashboard probe", "price": 3.5, "category": "home",
                   "reorder_point": 5, "target_level": 30, "stock": {PROBE_LOCATION: 20}}),
        )
        .await;

    let out = target_dir().join("dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let screenshot = out.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let base = client.base.clone();
    let started = Instant::now();
    // The script's requests are served by this runtime: wait off its threads.
    let (success, output) = tokio::task::spawn_blocking(move || run_script(&tools, &base, &out))
        .await
        .unwrap();
    println!(
        "--- browser script ({:.1} s) ---\n{output}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        success,
        "the browser script failed (output above; its log is target/dashboard/browser.log)"
    );

    let png =
        std::fs::read(&screenshot).unwrap_or_else(|e| panic!("{}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a screenshot",
        screenshot.display()
    );
    stop(running).await;
}
