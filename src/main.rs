//! The rosterd binary: parse arguments, set up logging, run the command, exit with its code.
//! The only place the process ends.

use std::process::ExitCode;

use clap::Parser;
use rosterd::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            rosterd::eprintln_masked!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    ExitCode::from(runtime.block_on(cli::run(cli)))
}

/// Logs go to stderr so that stdout carries only plans and reports. `RUST_LOG` overrides.
fn init_tracing(cli: &Cli) {
    let default = match (&cli.command, cli.verbose) {
        (_, v) if v >= 2 => "rosterd=trace",
        (_, 1) => "rosterd=debug",
        (Command::Apply { .. } | Command::Sandbox { .. } | Command::Run(_), _) => "rosterd=info",
        _ => "rosterd=warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every log line, at every level, passes the redactor.
        .with_writer(rosterd::redact::MakeRedacting(std::io::stderr));
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init(),
    }
}
