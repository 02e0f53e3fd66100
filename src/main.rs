//! The `stockflow` binary: parse the command line, set up logging, run.

use clap::Parser;
use stockflow::config::{Cli, Command, LogFormat, Settings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (args, demo_rate) = match &cli.command {
        Command::Serve(args) => (args, None),
        Command::Demo(demo) => (&demo.serve, Some(demo.rate)),
    };
    let settings = match Settings::resolve(args, demo_rate) {
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
    match runtime.block_on(run(settings)) {
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
