//! `ms5-edge`: the binary's edge. Parses the command line, sets up logging and signals, and
//! hands over to the library. `anyhow` lives only here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ms5_edge::config::{self, ConfigErrors};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "ms5-edge", version = None, disable_version_flag = true, about = "Edge daemon of the MS5.0 floor system")]
struct Cli {
    /// Print version, git commit, target triple and build profile.
    #[arg(long = "version", short = 'V')]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

const DEFAULT_CONFIG: &str = "/etc/ms5-edge/ms5-edge.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file without touching PLCs, broker or database.
    CheckConfig {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show what the running daemon is doing (reads its database read-only).
    Status {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Simulated PLCs + the real pipeline + a live terminal view.
    Demo {
        /// Forward to this broker (mqtt://host:port), else show the outbox filling.
        #[arg(long)]
        mqtt: Option<String>,
        /// Stop by itself after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration_s: Option<u64>,
        /// Print plain lines instead of redrawing the screen.
        #[arg(long)]
        plain: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", ms5_edge::version_string());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("ms5-edge: a command is required (run, check-config, status, demo); see --help");
        return ExitCode::from(2);
    };
    match command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Run { config } => {
            init_logging(false);
            run(&config)
        }
        Command::Status { config, json } => status(&config, json),
        Command::Demo {
            mqtt,
            duration_s,
            plain,
        } => {
            init_logging(!plain);
            demo(mqtt, duration_s, plain)
        }
    }
}

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MS5_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Under systemd, journald adds its own timestamps.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald);
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn print_errors(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
    eprintln!("{} error(s); configuration rejected", errors.0.len());
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let c = &loaded.config;
            println!(
                "ok {}: gateway {}, {} PLC(s), {} equipment, {} shift(s), broker {}",
                path.display(),
                c.gateway.id,
                c.plcs.len(),
                c.equipment.len(),
                c.shifts.len(),
                c.mqtt
                    .as_ref()
                    .map(|m| format!(
                        "{}://{}:{}",
                        if m.url.tls { "mqtts" } else { "mqtt" },
                        m.url.host,
                        m.url.port
                    ))
                    .unwrap_or_else(|| "none".into())
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::from(2)
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives; SIGHUP is logged (reload lands in a later release)
/// rather than left to its default action, which would kill the daemon.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return }
            _ = hup.recv() => tracing::warn!("SIGHUP: configuration reload is not supported by this version; running configuration kept"),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    // Files the config names must exist for `run` (SPEC §6): warnings become errors here.
    if !loaded.warnings.is_empty() {
        print_errors(&ConfigErrors(loaded.warnings));
        return ExitCode::from(2);
    }
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
            });
            ms5_edge::daemon::run(loaded.config, rx, Default::default()).await?;
            Ok(())
        })
    });
    match result {
        Ok(()) => {
            tracing::info!("clean shutdown");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "ms5-edge stopped");
            ExitCode::FAILURE
        }
    }
}

fn status(path: &std::path::Path, json: bool) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    match ms5_edge::status::read(&loaded.config) {
        Ok(report) => {
            if json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            if report.alive {
                ExitCode::SUCCESS
            } else {
                eprintln!("the daemon has not written a heartbeat recently: is it running?");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("ms5-edge status: {e} (has the daemon ever run with this config?)");
            ExitCode::from(1)
        }
    }
}

fn demo(mqtt: Option<String>, duration_s: Option<u64>, plain: bool) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let (tx, rx) = watch::channel(false);
            let stop = tx.clone();
            tokio::spawn(async move {
                match duration_s {
                    Some(s) => {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(s)) => {}
                            _ = wait_for_signal() => {}
                        }
                    }
                    None => wait_for_signal().await,
                }
                let _ = stop.send(true);
            });
            ms5_edge::demo::run(mqtt.as_deref(), rx, plain).await?;
            drop(tx);
            Ok(())
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms5-edge demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
