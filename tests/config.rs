//! The binary's options as an operator gives them: a flag over its
//! `STOCKFLOW_*` variable over the `--config` file over the default, every
//! bad value reported at once (exit code 2), a file's located at its line,
//! and `--help` showing the defaults.

use std::process::{Command, Output};

/// Runs the binary with `args` and exactly the `STOCKFLOW_*` variables of `env`.
fn stockflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stockflow"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("STOCKFLOW_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn flags_beat_variables_beat_the_file_and_every_error_is_told_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stockflow.toml");
    std::fs::write(&file, "workers = 0\nepoch_ms = 0\npartitions = 2000\n").unwrap();
    let output = stockflow(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--partitions",
            "0",
        ],
        &[
            // Over the file's 0: no epoch_ms error.
            ("STOCKFLOW_EPOCH_MS", "5"),
            // Under the flag's 0.
            ("STOCKFLOW_PARTITIONS", "7"),
            ("STOCKFLOW_CHECKPOINT_INTERVAL", "1h 30m"),
            ("STOCKFLOW_REQUEST_TIMEOUT", "often"),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "error: request_timeout: `often` is not a duration like 30s, 5m, 1h 30m or 90d (expected number at 0)".to_owned(),
            format!("error: config file {}:1: workers: must be between 1 and 64, got 0", file.display()),
            "error: partitions: must be between 1 and 1024, got 0".to_owned(),
        ]
    );
}

#[test]
fn help_shows_each_default() {
    let output = stockflow(&["serve", "--help"], &[]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for shown in [
        "[default: 127.0.0.1:8080]",
        "[default: 30s]",
        "[default: 90d]",
        "[default: inventory.events, order.events]",
    ] {
        assert!(help.contains(shown), "{shown} in {help}");
    }
}
