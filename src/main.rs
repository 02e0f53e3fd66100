//! The `stockflow` binary: parse the command line, set up logging, run.

use stockflow::config::{Cli, Command, LogCommand};
use stockflow::settings::{Checkpoints, LogFormat, Settings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_with_defaults();
    let (args, demo_rate) = match &cli.command {
        Command::Log(command) => return log_command(command),
        Command::Serve(args) => (args, None),
        Command::Demo(demo) => (&demo.serve, Some(demo.rate)),
        Command::Sink(sink) => (&sink.serve, None),
        Command::Export(export) => (&export.serve, None),
        Command::Dump(dump) => (&dump.serve, None),
        Command::Replay(replay) => (&replay.serve, None),
    };
    let resolved = Settings::resolve(args, demo_rate).and_then(|mut settings| {
        if let Command::Sink(sink) = &cli.command {
            match (sink.from.as_str(), settings.clickhouse.as_mut()) {
                (_, None) => return Err(vec!["`stockflow sink clickhouse` needs --clickhouse-url (or STOCKFLOW_CLICKHOUSE_URL)".to_owned()]),
                ("earliest", Some(clickhouse)) => clickhouse.from_earliest = true,
                ("latest", Some(clickhouse)) => clickhouse.from_earliest = false,
                (other, _) => return Err(vec![format!("--from: `{other}` is not earliest or latest")]),
            }
        }
        if let Command::Replay(replay) = &cli.command {
            configure_replay(&mut settings, replay)?;
        }
        Ok(settings)
    });
    let settings = match resolved {
        Ok(settings) => settings,
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    let log_format = settings.log_format;
    init_logging(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match &cli.command {
        Command::Sink(_) => runtime.block_on(stockflow::offline::sink(&settings)),
        Command::Export(export) => runtime.block_on(stockflow::offline::export(&settings, export)),
        Command::Dump(dump) => runtime.block_on(stockflow::offline::dump(&settings, dump)),
        Command::Replay(replay) => {
            runtime.block_on(stockflow::offline::replay(&settings, replay.out.as_deref()))
        }
        Command::Serve(_) | Command::Demo(_) => runtime.block_on(run(settings)),
        Command::Log(_) => unreachable!("handled before the settings are resolved"),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Once: the log line where logs are JSON (for the collector), else the plain line (both go to stderr).
            match log_format {
                LogFormat::Json => tracing::error!("{error:#}"),
                LogFormat::Pretty => eprintln!("error: {error:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A replay: its topics, range, fresh data dir and source log; offline, with
/// one checkpoint (its result) written at the end.
fn configure_replay(
    settings: &mut Settings,
    args: &stockflow::config::ReplayArgs,
) -> Result<(), Vec<String>> {
    use stockflow::settings::{Bound, Range, ReplaySettings};
    let mut errors = Vec::new();
    if !args.topics.is_empty() {
        settings.sources.clear();
        for topic in &args.topics {
            let (name, format) = topic
                .split_once('=')
                .unwrap_or((topic.as_str(), "stockflow"));
            match stockflow::source::Format::parse(format.trim()) {
                Ok(format) => settings
                    .sources
                    .push(stockflow::settings::SourceDecl::new(name.trim(), format)),
                Err(error) => errors.push(format!("--topic {topic}: {error}")),
            }
        }
    }
    let from = Bound::parse(&args.from).map_err(|e| format!("--from: {e}"));
    let to = Bound::parse(&args.to).map_err(|e| format!("--to: {e}"));
    match (from, to) {
        (Ok(Bound::Latest), _) => errors
            .push("--from: `latest` would replay nothing; use earliest, offsets or a time".into()),
        (_, Ok(Bound::Earliest)) => errors
            .push("--to: `earliest` would replay nothing; use latest, offsets or a time".into()),
        (Ok(from), Ok(to)) => {
            let source_dir = args
                .source_dir
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(stockflow::config::DEFAULT_DATA_DIR));
            settings.replay = Some(ReplaySettings {
                range: Range {
                    from,
                    to,
                    time_field: args.time_field,
                },
                source_dir,
            });
        }
        (from, to) => errors.extend(from.err().into_iter().chain(to.err())),
    }
    if args.serve.data_dir.is_none() {
        settings.data_dir = std::path::PathBuf::from(format!(
            "./stockflow-replay-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
    }
    settings.offline = true;
    // Its one checkpoint, written at the end, is its result.
    settings.checkpoints = Checkpoints::AtShutdown;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `stockflow log check|repair`: exit code 1 when the log is damaged (check)
/// or could not be repaired.
fn log_command(command: &LogCommand) -> std::process::ExitCode {
    init_logging(LogFormat::Pretty);
    let data_dir = |args: &stockflow::config::LogArgs| {
        args.data_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(stockflow::config::DEFAULT_DATA_DIR))
    };
    let mut out = std::io::stdout().lock();
    let result = match command {
        LogCommand::Check(args) => {
            stockflow::log_commands::log_check(&data_dir(args), &mut out).map(|damaged| !damaged)
        }
        LogCommand::Repair(args) => {
            stockflow::log_commands::log_repair(&data_dir(&args.log), &mut out).map(|()| true)
        }
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let running = stockflow::server::start(&settings).await?;
    running.shutdown.trigger_on_signals();
    if settings.demo_rate.is_some() {
        eprintln!("stockflow demo is live: dashboard http://{addr}/  API http://{addr}/v1/stock  (Ctrl-C to stop)", addr = running.addr);
    }
    running.wait().await
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
