//! The `stockflow` binary: parse the command line, set up logging, run.

use clap::Parser;
use stockflow::config::{Cli, Command, LogFormat, Settings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (args, demo_rate) = match &cli.command {
        Command::Serve(args) => (args, None),
        Command::Demo(demo) => (&demo.serve, Some(demo.rate)),
        Command::Sink(sink) => (&sink.serve, None),
        Command::Export(export) => (&export.serve, None),
        Command::Dump(dump) => (&dump.serve, None),
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
        if let Command::Dump(dump) = &cli.command {
            settings.offline = true;
            if !dump.use_checkpoint {
                settings.checkpoint_interval = None;
            }
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
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = match &cli.command {
        Command::Sink(_) => runtime.block_on(stockflow::offline::sink(&settings)),
        Command::Export(export) => runtime.block_on(stockflow::offline::export(&settings, export)),
        Command::Dump(dump) => runtime.block_on(stockflow::offline::dump(&settings, dump)),
        Command::Serve(_) | Command::Demo(_) => runtime.block_on(run(settings)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let running = stockflow::server::start(&settings).await?;
    running.shutdown.trigger_on_signals();
    if settings.demo_rate.is_some() {
        eprintln!("stockflow demo is live: http://{}/v1/stock  (Ctrl-C to stop)", running.addr);
    }
    running.wait().await
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
