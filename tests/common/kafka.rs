//! What the tests against a Kafka-compatible broker share: the broker of
//! `scripts/services.sh` (Tansu; override with `STOCKFLOW_KAFKA_BROKERS`),
//! fresh topic names, a server's settings for a topic, and brokers of a
//! test's own.

use stockflow::settings::{Settings, SourceDecl};
use stockflow::source::kafka::KafkaSettings;
use stockflow::source::Format;

use super::Server;

/// The shared broker's address.
pub fn brokers() -> String {
    std::env::var("STOCKFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (nor an earlier run) uses: the broker is shared.
pub fn unique(name: &str) -> String {
    format!(
        "it-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Settings of a server reading `topic` (stockflow's format) from `brokers`,
/// with its commands, outcomes and alerts topics named after `topic`.
pub fn settings(dir: &std::path::Path, brokers: &str, topic: &str, workers: usize) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        workers,
        epoch_max_events: 10_000,
        partitions: 3,
        rate_limit: None,
        http_limits: stockflow::settings::Limits {
            max_connections: 1024,
            ..Settings::default().http_limits
        },
        kafka: Some(KafkaSettings::new(brokers, "stockflow-tests")),
        sources: vec![SourceDecl::new(topic, Format::Stockflow)],
        // Per test: the broker is shared by every test.
        commands_topic: format!("{topic}.commands"),
        outcomes_topic: topic.to_owned(),
        alerts_topic: format!("{topic}.alerts"),
        ..Settings::default()
    }
}

impl Server {
    /// A server reading `topic` from `brokers`: [`settings`].
    pub fn kafka(dir: &std::path::Path, brokers: &str, topic: &str, workers: usize) -> Server {
        Server::of(settings(dir, brokers, topic, workers))
    }
}

/// A directory of the tools `scripts/services.sh` installs (or `STOCKFLOW_CACHE`).
fn cache() -> String {
    std::env::var("STOCKFLOW_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/stockflow", std::env::var("HOME").unwrap()))
}

/// The Tansu binary that `scripts/services.sh` installs (or `STOCKFLOW_TANSU`).
pub fn tansu_binary() -> String {
    std::env::var("STOCKFLOW_TANSU").unwrap_or_else(|_| format!("{}/bin/tansu", cache()))
}

/// moto's S3 server that `scripts/services.sh` installs next to Tansu (or `STOCKFLOW_MOTO`).
pub fn moto_binary() -> String {
    std::env::var("STOCKFLOW_MOTO")
        .unwrap_or_else(|_| tansu_binary().replace("/bin/tansu", "/bin/moto_server"))
}

/// A process of the test's own (a broker, an S3 server), killed when dropped.
pub struct OwnBroker(pub std::process::Child);

impl OwnBroker {
    /// A Tansu in memory listening on `listen`, advertising `advertised`
    /// (a proxy in front of it, or `listen` itself).
    pub fn memory(listen: u16, advertised: u16) -> OwnBroker {
        let child = std::process::Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu (installed by scripts/services.sh) starts");
        OwnBroker(child)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
