//! What the tests against a local (embedded-log) server share.

use std::path::Path;
use stockflow::config::{ServeArgs, Settings};

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
