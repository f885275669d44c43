//! `ms5-edge`: the binary's edge. Parses the command line, sets up logging and signals, and
//! hands over to the library. `anyhow` lives only here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ms5_edge::config::{self, Config, ConfigErrors};
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
    /// A live full-screen view of the running daemon (reads its database read-only);
    /// `q` or Ctrl-C quits.
    Top {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A line per change instead of the screen (also when stdout is not a terminal).
        #[arg(long)]
        plain: bool,
    },
    /// The figures of a shift or window from the database (read-only): text, JSON or one
    /// self-contained HTML file with charts (SPEC §10).
    Report {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A shift by name (its latest instance unless --date).
        #[arg(long)]
        shift: Option<String>,
        /// The local date the shift starts on, YYYY-MM-DD.
        #[arg(long)]
        date: Option<String>,
        /// Window start: RFC 3339 or "YYYY-MM-DD HH:MM" in gateway.timezone.
        #[arg(long)]
        from: Option<String>,
        /// Window end, like --from.
        #[arg(long)]
        to: Option<String>,
        /// Only this equipment.
        #[arg(long)]
        equipment: Option<String>,
        /// text, json or html.
        #[arg(long, default_value = "text", value_parser = ["text", "json", "html"])]
        format: String,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Sign a command body for a gateway with `[commands] key_file` (SPEC §7); prints the
    /// body to publish.
    Sign {
        /// The command key (the same file as the gateway's `[commands] key_file`).
        #[arg(long)]
        key_file: PathBuf,
        /// The full MQTT topic the command is published on, prefix included, e.g.
        /// ms5/bp01-gw1/cmd/BP01.PACK.BAG1/andon/ack.
        #[arg(long)]
        topic: String,
        /// The JSON body; read from stdin when absent. `issued_at` = now is added if missing.
        body: Option<String>,
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
        eprintln!(
            "ms5-edge: a command is required (run, check-config, status, top, report, sign, demo); see --help"
        );
        return ExitCode::from(2);
    };
    match command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Run { config } => {
            init_logging(false);
            run(&config)
        }
        Command::Status { config, json } => status(&config, json),
        Command::Top { config, plain } => top(&config, plain),
        Command::Report {
            config,
            shift,
            date,
            from,
            to,
            equipment,
            format,
            output,
        } => report(
            &config,
            ms5_edge::report::Request {
                shift,
                date,
                from,
                to,
                equipment,
            },
            &format,
            output.as_deref(),
        ),
        Command::Sign {
            key_file,
            topic,
            body,
        } => sign(&key_file, &topic, body),
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
            for w in loaded.warnings.iter().chain(&loaded.notices) {
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
            if let Some(s) = &c.sparkplug {
                println!(
                    "sparkplug: group {}, edge node {}, primary host {}, cloudevents {}",
                    s.group_id,
                    s.edge_node_id,
                    s.primary_host_id.as_deref().unwrap_or("none"),
                    if s.cloudevents { "on" } else { "off" }
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::from(2)
        }
    }
}

/// What a signal asks of the daemon.
enum Signal {
    Shutdown,
    Reload,
}

/// Signal handlers for `run`; `None` when they cannot be installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("SIGTERM: shutting down"); Signal::Shutdown }
            _ = self.int.recv() => { tracing::info!("SIGINT: shutting down"); Signal::Shutdown }
            _ = self.hup.recv() => { tracing::info!("SIGHUP: re-reading the configuration"); Signal::Reload }
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives; SIGHUP is logged and ignored (`demo` has no file
/// to re-read) rather than left to its default action, which would kill the process.
async fn wait_for_signal() {
    let Some(mut signals) = Signals::install() else {
        tracing::error!("cannot install signal handlers; Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    while let Signal::Reload = signals.next().await {}
}

/// Legal but unusual settings (`timeout_ms` > `poll_interval_ms`, …): logged, never fatal.
fn log_notices(notices: &[ms5_edge::config::ConfigError]) {
    for n in notices {
        tracing::warn!(warning = %n, "configuration warning");
    }
}

/// Re-reads `path` for a reload: the new configuration when it is valid for `run` (files it
/// names must exist), else every error logged and `None` (the running configuration stays).
fn reload_config(path: &std::path::Path, notifier: &ms5_edge::notify::Notifier) -> Option<Config> {
    let problems = match config::load_file(path) {
        Ok(loaded) if loaded.warnings.is_empty() => {
            log_notices(&loaded.notices);
            return Some(loaded.config);
        }
        Ok(loaded) => loaded.warnings,
        Err(errors) => errors.0,
    };
    for e in &problems {
        tracing::error!(error = %e, "reload rejected");
    }
    tracing::error!(
        errors = problems.len(),
        file = %path.display(),
        "configuration reload rejected; the running configuration is kept"
    );
    notifier.status(&format!(
        "reload of {} rejected ({} error(s), see the journal); running configuration kept",
        path.display(),
        problems.len()
    ));
    None
}

/// One thread for the I/O (PLC tasks, uplink, Sparkplug session, metrics): every one of them
/// waits on sockets and timerfds and does microseconds of work per wake-up, so a work-stealing
/// pool would only add cross-thread wake-ups (issue 10: a third of the context switches per
/// poll). Blocking work runs elsewhere: the core (engine + SQLite writer) on its own thread,
/// SQLite reads and deletes of the uplink in `spawn_blocking`.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
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
    log_notices(&loaded.notices);
    let path = path.to_path_buf();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let notifier = ms5_edge::notify::Notifier::from_env();
            let (tx, rx) = watch::channel(false);
            let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
            let signal_notifier = notifier.clone();
            tokio::spawn(async move {
                let Some(mut signals) = Signals::install() else {
                    tracing::error!("cannot install signal handlers; Ctrl-C only, no reload");
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(true);
                    return;
                };
                loop {
                    match signals.next().await {
                        Signal::Shutdown => break,
                        Signal::Reload => {
                            if let Some(new) = reload_config(&path, &signal_notifier) {
                                let _ = reload_tx.send(new).await;
                            }
                        }
                    }
                }
                let _ = tx.send(true);
            });
            ms5_edge::daemon::run_with_reload(
                loaded.config,
                reload_rx,
                rx,
                Default::default(),
                notifier,
            )
            .await?;
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
            // 3: the database file went away; systemd restarts on a new one (operating.md).
            match e.downcast_ref::<ms5_edge::daemon::DaemonError>() {
                Some(d) => ExitCode::from(d.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn report(
    path: &std::path::Path,
    req: ms5_edge::report::Request,
    format: &str,
    output: Option<&std::path::Path>,
) -> ExitCode {
    use ms5_edge::report::{self, ReportError};
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    let config = &loaded.config;
    let now = ms5_edge::clock::Clock::system().now_ms();
    let built = report::window(config, &req, now).and_then(|w| {
        let db = ms5_edge::store::ReadOnly::open(&config.gateway.data_dir)?;
        report::build(config, &db, &w, req.equipment.as_deref(), now)
    });
    let value = match built {
        Ok(v) => v,
        Err(ReportError::Usage(e)) => {
            eprintln!("ms5-edge report: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("ms5-edge report: {e} (has the daemon ever run with this config?)");
            return ExitCode::from(1);
        }
    };
    let text = match format {
        "json" => format!("{value}\n"),
        "html" => match report::html::render(&value) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("ms5-edge report: drawing the charts failed: {e}");
                return ExitCode::from(1);
            }
        },
        _ => report::text(&value),
    };
    match output {
        None => print!("{text}"),
        Some(file) => {
            if let Err(e) = std::fs::write(file, text) {
                eprintln!("ms5-edge report: cannot write {}: {e}", file.display());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
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

/// `ms5-edge top`: the screen on a terminal, else (or with `--plain`) a line per change until
/// SIGINT. Exit 0 on `q`/Ctrl-C/SIGINT; 1 when there is no database or the terminal fails.
fn top(path: &std::path::Path, plain: bool) -> ExitCode {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    let config = loaded.config;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ms5-edge top: {e:#}");
            return ExitCode::from(1);
        }
    };
    // Handlers first, so a SIGINT/SIGTERM at any moment from here on ends `top` cleanly
    // (exit 0, terminal restored) instead of killing it. SIGHUP is ignored.
    let signals = {
        let _in_runtime = rt.enter();
        Signals::install()
    };
    let shutdown = async move {
        match signals {
            Some(mut s) => while let Signal::Reload = s.next().await {},
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let now = || ms5_edge::clock::Clock::system().now_ms();
    let first = match ms5_edge::top::read(&config, now()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ms5-edge top: {e} (has the daemon ever run with this config?)");
            return ExitCode::from(1);
        }
    };
    let result = if plain || !std::io::stdout().is_terminal() {
        rt.block_on(ms5_edge::top::plain::run(&config, first, shutdown))
    } else {
        // Raw mode makes Ctrl-C a key; a signal from elsewhere (kill, a closed SSH session)
        // reaches the screen loop through this flag.
        let signalled = std::sync::Arc::new(AtomicBool::new(false));
        let flag = signalled.clone();
        // The screen loop blocks, so it runs on a blocking thread while this thread drives
        // the (single-threaded) runtime that waits for the signal.
        let screen = move || {
            let mut last = first;
            ms5_edge::top::term::run(
                || {
                    match ms5_edge::top::read(&config, now()) {
                        Ok(v) => last = v,
                        Err(e) => last.banner = Some(format!("cannot read the database: {e}")),
                    }
                    last.clone()
                },
                || signalled.load(Ordering::Relaxed),
            )
        };
        rt.block_on(async move {
            tokio::spawn(async move {
                shutdown.await;
                flag.store(true, Ordering::Relaxed);
            });
            tokio::task::spawn_blocking(screen)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms5-edge top: terminal: {e}");
            ExitCode::from(1)
        }
    }
}

/// `ms5-edge sign`: the reference signer (the algorithm lives in `uplink::signature`).
fn sign(key_file: &std::path::Path, topic: &str, body: Option<String>) -> ExitCode {
    use ms5_edge::uplink::signature;
    use std::io::Read;
    let key = match signature::read_key(key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ms5-edge sign: {e}");
            return ExitCode::from(2);
        }
    };
    let body = match body {
        Some(b) => b,
        None => {
            let mut b = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut b) {
                eprintln!("ms5-edge sign: cannot read the body from stdin: {e}");
                return ExitCode::from(2);
            }
            b
        }
    };
    // A trailing newline from `echo` or a file is not part of the body.
    let body = body.trim_end_matches(['\r', '\n']);
    let issued_at = format!("{:.3}", jiff::Timestamp::now());
    match signature::sign_body(&key, topic, body, &issued_at) {
        Ok(signed) => {
            println!("{signed}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ms5-edge sign: {e}");
            ExitCode::from(2)
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
