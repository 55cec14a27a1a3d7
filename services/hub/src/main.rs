//! `fhir-hub`: parse the command line, load the configuration, run.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fhir_hub::config::{Config, Overrides, Role};
use fhir_hub::stdout::{self, Stdout};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the notification paths allocate many small buffers
/// (rows, JSON values, frames) across threads, where glibc's free and consolidation took a
/// fifth of the hub's CPU in the stream replay profile (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every flag that sets a configuration key also reads that key's environment variable
/// (`HUB_SECTION__KEY`, shown by `--help`); the flag wins over the variable, the variable over
/// the configuration file.
#[derive(Parser)]
#[command(
    name = "fhir-hub",
    version,
    about = "FHIR Subscription Hub",
    after_help = "Every configuration key can be set as HUB_SECTION__KEY (e.g. HUB_AUTH__MODE=required); \
                  `fhir-hub config check` validates the result."
)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Use Kafka at these bootstrap servers instead of the embedded log.
    #[arg(long, global = true, env = "HUB_KAFKA__BROKERS")]
    kafka_brokers: Option<String>,
    /// Store URL (postgres://... or sqlite://...).
    #[arg(long, global = true, env = "HUB_DATABASE__URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Directory for the embedded store and log.
    #[arg(long, global = true, env = "HUB_SERVER__DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliAction {
    Create,
    Update,
    Delete,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (all roles by default).
    Serve {
        /// Address to listen on, host:port (a host name is resolved; port 0 picks one).
        #[arg(long, env = "HUB_SERVER__LISTEN")]
        listen: Option<String>,
        /// Roles to run, comma-separated: api, matcher, delivery (all: every one).
        #[arg(long, value_delimiter = ',', env = "HUB_SERVER__ROLES")]
        roles: Option<Vec<String>>,
    },
    /// Publish NDJSON resources or change envelopes to the changes topic.
    Publish {
        /// Input file; stdin when absent or `-`.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Tenant for input lines that name none.
        #[arg(long)]
        tenant: Option<String>,
        /// Action for bare resources (default: create for version 1 or none, else update).
        #[arg(long, value_enum)]
        action: Option<CliAction>,
        /// Records per publish call.
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Print `Type/id` of each NDJSON resource that criteria match (try criteria offline).
    Match {
        /// R4 search criteria, like `Observation?code=http://loinc.org|2345-7`.
        #[arg(long)]
        criteria: String,
        /// NDJSON input; stdin when absent or `-`.
        #[arg(long, short)]
        input: Option<PathBuf>,
    },
    /// Evaluate a FHIRPath expression and print the result as a JSON array.
    Fhirpath {
        /// The expression, like `Observation.value.ofType(Quantity).value > 5`.
        #[arg(long, short)]
        expression: String,
        /// A JSON resource to evaluate against (`-` for stdin); none when absent.
        #[arg(long, short)]
        resource: Option<PathBuf>,
        /// The previous version of the resource, for `%previous` (`%current` is the resource).
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// Print the effective configuration as JSON (without secrets).
    Config {
        #[command(subcommand)]
        command: Option<ConfigCommand>,
    },
    /// Probe the hub on this host (`/health` on the API listener, loopback for 0.0.0.0):
    /// exit 0 when it answers 200, 1 otherwise (a container HEALTHCHECK).
    Health {
        /// Probe `/ready` (this process can do its work) instead of `/health`.
        #[arg(long)]
        ready: bool,
        /// Probe this URL instead.
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Manage API keys (in the configured database; no running hub needed).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the configuration (defaults, file, HUB_* variables, flags): print every problem
    /// and exit 1, or print a summary of the effective configuration (no secrets) and exit 0.
    Check,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its token (shown this once; only a hash is stored).
    Create {
        /// The tenant the key acts in.
        #[arg(long)]
        tenant: Option<String>,
        /// Scopes, space-separated or repeated: SMART v2 (system/Subscription.cruds,
        /// system/Observation.rs, patient/Observation.rs), hub/operator (the whole hub),
        /// hub/admin (the key's tenant), hub/publish, hub/metrics.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A name for people reading `keys list`.
        #[arg(long, default_value = "")]
        name: String,
        /// The patient context of patient/ scopes.
        #[arg(long)]
        patient: Option<String>,
        /// Days until the key stops working (none: no expiry).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key at once.
    Revoke { id: String },
}

fn parse_roles(names: &[String]) -> anyhow::Result<Vec<Role>> {
    // `HUB_SERVER__ROLES` may be written as a list, `[api, matcher]` or `["api","matcher"]`
    let names: Vec<String> = names
        .iter()
        .map(|n| n.trim_matches(|c: char| c.is_whitespace() || "[]\"'".contains(c)))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let names = names.as_slice();
    names
        .iter()
        .map(|n| match n.trim() {
            "api" => Ok(Role::Api),
            "matcher" => Ok(Role::Matcher),
            "delivery" => Ok(Role::Delivery),
            "all" => Ok(Role::Api),
            other => anyhow::bail!("unknown role '{other}' (api, matcher, delivery, all)"),
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(|mut roles| {
            if names.iter().any(|n| n.trim() == "all") {
                roles = vec![Role::Api, Role::Matcher, Role::Delivery];
            }
            roles
        })
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run_command());
    // Blocking tasks (a Kafka consumer being closed, a SQLite call) get a bounded time: the
    // process never hangs at exit waiting for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    match result {
        // the reader of our output went away (`| head`): done, as other Unix tools are
        Err(e) if stdout::is_closed(&e) => Ok(()),
        other => other,
    }
}

async fn run_command() -> anyhow::Result<()> {
    fhir_hub::telemetry::init();
    let cli = Cli::parse();
    let mut overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone(),
        kafka_brokers: cli.kafka_brokers.clone(),
        ..Default::default()
    };
    match cli.command {
        Command::Serve { listen, roles } => {
            overrides.listen = listen;
            overrides.roles = roles.as_deref().map(parse_roles).transpose()?;
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            let shutdown = CancellationToken::new();
            // registered before anything starts: a signal from now on drains
            let signals = Signals::new().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot listen for SIGTERM and SIGHUP; Ctrl-C only");
                Signals::default()
            });
            tokio::spawn(signal_handler(signals, shutdown.clone()));
            fhir_hub::run(config, None, shutdown).await
        }
        Command::Publish {
            input,
            tenant,
            action,
            chunk,
            quiet,
        } => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            let action = action.map(|a| match a {
                CliAction::Create => hub_fhir::Action::Create,
                CliAction::Update => hub_fhir::Action::Update,
                CliAction::Delete => hub_fhir::Action::Delete,
            });
            let args = fhir_hub::publish::PublishArgs {
                input: input.as_deref(),
                tenant,
                action,
                chunk,
                progress: !quiet && std::io::stderr().is_terminal(),
            };
            let n = fhir_hub::publish::run(&config, args).await?;
            stdout::line(format_args!(
                "published {n} change events to '{}'",
                config.log.changes_topic
            ))?;
            Ok(())
        }
        Command::Match { criteria, input } => {
            let criteria = match fhir_hub::match_cmd::parse_criteria(&criteria) {
                Ok(c) => c,
                Err(oo) => {
                    eprintln!("{}", serde_json::to_string_pretty(&oo.to_json())?);
                    std::process::exit(2);
                }
            };
            let reader: Box<dyn std::io::Read> = match input.as_deref() {
                None => Box::new(std::io::stdin().lock()),
                Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
                Some(p) => Box::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                ),
            };
            let mut out = Stdout::lock();
            let stats =
                fhir_hub::match_cmd::run(&criteria, reader, &mut out, &mut std::io::stderr())?;
            eprintln!("{} of {} resources matched", stats.matched, stats.read);
            if stats.bad_lines > 0 {
                anyhow::bail!("{} input lines were not valid JSON", stats.bad_lines);
            }
            Ok(())
        }
        Command::Fhirpath {
            expression,
            resource,
            previous,
        } => {
            let (code, out) =
                fhir_hub::fhirpath_cmd::run(&expression, resource.as_deref(), previous.as_deref())?;
            stdout::line(serde_json::to_string_pretty(&out)?)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Keys { command } => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            keys_command(&config, command).await
        }
        Command::Health {
            ready,
            url,
            timeout_secs,
        } => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            let url = fhir_hub::health_cmd::probe_url(&config, url.as_deref(), ready)?;
            match fhir_hub::health_cmd::probe(&url, std::time::Duration::from_secs(timeout_secs))
                .await
            {
                Ok(line) => {
                    stdout::line(line)?;
                    Ok(())
                }
                Err(e) => {
                    eprintln!("unhealthy: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Command::Config { command: None } => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            stdout::line(
                serde_json::to_string_pretty(&config.redacted()).context("rendering config")?,
            )?;
            Ok(())
        }
        Command::Config {
            command: Some(ConfigCommand::Check),
        } => match Config::check(cli.config.as_deref(), &overrides) {
            Ok(config) => {
                let mut out = Stdout::lock();
                writeln!(out, "configuration OK")?;
                for (key, value) in config.summary() {
                    writeln!(out, "  {key:<22} {value}")?;
                }
                out.flush()?;
                Ok(())
            }
            Err(problems) => {
                let n = problems.len();
                eprintln!(
                    "configuration has {n} problem{}:",
                    if n == 1 { "" } else { "s" }
                );
                for p in &problems {
                    eprintln!("  - {p}");
                }
                std::process::exit(1);
            }
        },
    }
}

async fn keys_command(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    use fhir_hub::auth::keys;
    let store = hub_store::Store::connect_with(&config.database_url(), config.database_timeouts())
        .await
        .context("opening the store")?;
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
            patient,
            expires_in_days,
        } => {
            let expires_at = expires_in_days.map(|d| {
                hub_fhir::time_fmt::instant(
                    time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(d)),
                )
            });
            let spec = keys::KeySpec {
                tenant: tenant.unwrap_or_else(|| config.tenancy.default_tenant.clone()),
                name,
                scopes: scopes.join(" "),
                patient,
                expires_at,
            };
            let (row, token) = keys::create(&store, spec).await?;
            eprintln!(
                "created API key {} for tenant '{}' (scopes: {}); the token below is shown once:",
                row.id, row.tenant, row.scopes
            );
            stdout::line(token)?;
        }
        KeysCommand::List { tenant } => {
            let rows = store.api_keys(tenant.as_deref()).await?;
            let list: Vec<_> = rows.iter().map(keys::to_json).collect();
            stdout::line(serde_json::to_string_pretty(&list)?)?;
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_api_key(&id).await? {
                anyhow::bail!("no usable API key '{id}'");
            }
            stdout::line(format_args!("revoked API key {id}"))?;
        }
    }
    store.close().await;
    Ok(())
}

/// Cancel `shutdown` on SIGTERM, SIGHUP or Ctrl-C; a second signal exits at once. SIGHUP
/// (a closed terminal, or an operator's "reload") drains like SIGTERM: the configuration is
/// not reloaded in place, a restart applies it.
async fn signal_handler(mut signals: Signals, shutdown: CancellationToken) {
    let name = signals.next().await;
    tracing::info!(
        signal = name,
        "shutdown signal received; finishing in-flight work"
    );
    shutdown.cancel();
    let name = signals.next().await;
    tracing::warn!(signal = name, "second signal: exiting now");
    std::process::exit(130);
}

/// The signals that stop the process (registered once, before the first wait, so that none
/// arriving between two waits is lost).
#[derive(Default)]
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                unix: Some((
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::hangup())?,
                )),
            })
        }
        #[cfg(not(unix))]
        Ok(Signals::default())
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((term, hup)) = &mut self.unix {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
