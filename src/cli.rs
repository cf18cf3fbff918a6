//! Command-line interface: the clap tree (SPEC §5) and the code that turns a command into
//! output and an exit code. The only place that prints a plan or a report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::ctx::{Clock, Ctx};
use crate::model::Outcome;
use crate::plan::render;
use crate::reconcile::{self, Report, RunOptions, Target};

/// Exit codes (SPEC §5).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const PENDING: u8 = 2;
    pub const FAILED: u8 = 3;
    pub const BLOCKED: u8 = 4;
}

#[derive(Debug, Parser)]
#[command(
    name = "rosterd",
    version,
    about = "Keeps chat-group membership equal to YAML manifests kept in git"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Path to rosterd.yaml.
    #[arg(
        long,
        short = 'c',
        default_value = "rosterd.yaml",
        env = "ROSTERD_CONFIG"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct Selection {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only these groups (rosterd's group names); repeatable.
    #[arg(long = "group", short = 'g', value_name = "NAME")]
    pub groups: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate every file; no network.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
        /// `json`: the diagnostics as a JSON document on stdout, for tools.
        #[arg(long, value_enum, default_value_t = DiagFormat::Text)]
        format: DiagFormat,
    },
    /// Show what apply would change.
    Plan {
        #[command(flatten)]
        sel: Selection,
        /// Exit 2 when changes are pending.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Make every selected group equal to its manifest.
    Apply {
        #[command(flatten)]
        sel: Selection,
        /// Apply groups whose plan removes more than `max_removals`.
        #[arg(long)]
        allow_mass_removal: bool,
        /// Plan and show what would be applied; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The daemon: watch the files, reconcile on change and every `resync`, serve /healthz
    /// /readyz /metrics /status.
    Run(ConfigArg),
    /// Print the JSON Schema (draft-07) of one kind of file, or write all three to a folder.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["kind", "out"])))]
    Schema {
        /// The file kind whose schema is printed on stdout.
        #[arg(long, value_enum)]
        kind: Option<crate::schema::FileKind>,
        /// Write rosterd.schema.json, people.schema.json and manifest.schema.json here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Serve local emulators of the providers on loopback.
    Sandbox {
        /// Seed state (YAML or JSON); default: empty apps.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Start the sandbox, plan and apply manifests/ against it, and show that a second plan is empty.
    Demo {
        /// The GitOps tree to run.
        #[arg(long, default_value = "manifests")]
        manifests: PathBuf,
    },
}

/// Whether stdout gets colour: a terminal, and NO_COLOR unset or empty.
pub fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Run one command; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Validate { config, format } => validate(&config.config, format),
        Command::Plan {
            sel,
            detailed_exitcode,
        } => {
            reconcile_cmd(
                &sel,
                Mode::Plan {
                    detailed: detailed_exitcode,
                },
                false,
            )
            .await
        }
        Command::Apply {
            sel,
            allow_mass_removal,
            dry_run,
        } => {
            let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
            reconcile_cmd(&sel, mode, allow_mass_removal).await
        }
        Command::Run(c) => {
            let opts = crate::daemon::DaemonOptions::new(&c.config);
            // The daemon installs its own SIGTERM/SIGINT/SIGHUP handling.
            match crate::daemon::run(opts, tokio_util::sync::CancellationToken::new()).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    crate::eprintln_masked!("error: {e:#}");
                    exit::ERROR
                }
            }
        }
        Command::Schema { kind, out } => schema_cmd(kind, out.as_deref()),
        Command::Sandbox { state } => {
            let token = tokio_util::sync::CancellationToken::new();
            let t = token.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                t.cancel();
            });
            match crate::sandbox::run_sandbox(state, token).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    crate::eprintln_masked!("error: {e:#}");
                    exit::ERROR
                }
            }
        }
        Command::Demo { manifests } => {
            let mut out = crate::redact::Redacting::new(std::io::stdout());
            match crate::demo::demo(&manifests, &mut out, stdout_color()).await {
                Ok(code) => code,
                Err(e) => {
                    crate::eprintln_masked!("error: {e:#}");
                    exit::ERROR
                }
            }
        }
    }
}

fn validate(path: &Path, format: DiagFormat) -> u8 {
    let result = config::load(path);
    if format == DiagFormat::Json {
        let (diags, warnings) = match &result {
            Ok(cfg) => (serde_json::json!([]), cfg.warnings.clone()),
            Err(d) => (d.to_json(), Vec::new()),
        };
        let doc = serde_json::json!({
            "valid": result.is_ok(), "diagnostics": diags, "warnings": warnings,
        });
        let text = serde_json::to_string_pretty(&doc).expect("JSON") + "\n";
        print!("{}", crate::redact::mask(&text));
        return if result.is_ok() {
            exit::OK
        } else {
            exit::ERROR
        };
    }
    match result {
        Ok(cfg) => {
            print_warnings(&cfg);
            let members: usize = cfg.groups.iter().map(|g| g.members.len()).sum();
            println!(
                "{}: valid ({} provider instances, {} groups, {} members)",
                path.display(),
                cfg.instances.len(),
                cfg.groups.len(),
                members
            );
            exit::OK
        }
        Err(diags) => {
            print_diagnostics(&diags);
            exit::ERROR
        }
    }
}

fn schema_cmd(kind: Option<crate::schema::FileKind>, out: Option<&Path>) -> u8 {
    use crate::schema::{FileKind, schema_for};
    let pretty = |k| serde_json::to_string_pretty(&schema_for(k)).expect("schema is JSON") + "\n";
    if let Some(k) = kind {
        print!("{}", pretty(k));
    }
    if let Some(dir) = out {
        for k in FileKind::ALL {
            let path = dir.join(k.file_name());
            let written =
                std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, pretty(k)));
            if let Err(e) = written {
                crate::eprintln_masked!("error: cannot write {}: {e}", path.display());
                return exit::ERROR;
            }
        }
    }
    exit::OK
}

/// File errors on stderr: source frames on a terminal (unless NO_COLOR), else one plain
/// `file:line:col: error: …` line each, as CI logs and editors' problem matchers expect.
fn print_diagnostics(diags: &config::Diagnostics) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let text = if std::io::stderr().is_terminal() && !no_color {
        diags.framed(true)
    } else {
        diags.to_string()
    };
    eprint!("{}", crate::redact::mask(&text));
    eprintln!("{} error(s); nothing was written", diags.0.len());
}

/// Warnings go to stderr; they never change the exit code.
fn print_warnings(cfg: &Config) {
    for w in &cfg.warnings {
        crate::eprintln_masked!("{w}");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plan { detailed: bool },
    DryRun,
    Apply,
}

/// Load, select, build the clients, run the engine, print, and compute the exit code.
async fn reconcile_cmd(sel: &Selection, mode: Mode, allow_mass_removal: bool) -> u8 {
    let cfg = match config::load(&sel.config.config) {
        Ok(c) => {
            print_warnings(&c);
            c
        }
        Err(diags) => {
            print_diagnostics(&diags);
            return exit::ERROR;
        }
    };
    let groups = match select(&cfg, &sel.groups) {
        Ok(g) => g,
        Err(e) => {
            crate::eprintln_masked!("error: {e}");
            return exit::ERROR;
        }
    };
    let targets = match build_targets(&cfg, &groups) {
        Ok(t) => t,
        Err(e) => {
            crate::eprintln_masked!("error: {e}");
            crate::eprintln_masked!("nothing was written");
            return exit::ERROR;
        }
    };
    let audit = match (&cfg.audit_log, mode) {
        (Some(path), Mode::Apply) => match crate::audit::AuditLog::open(path) {
            Ok(a) => Some(a),
            Err(e) => {
                crate::eprintln_masked!("error: cannot open audit log {}: {e}", path.display());
                return exit::ERROR;
            }
        },
        _ => None,
    };
    let apply = mode == Mode::Apply;
    let progress: Option<Arc<dyn reconcile::Progress>> = if apply {
        let p = reconcile::default_progress();
        // Long waits inside the HTTP layer (throttling, rate cap, backoff) show on the progress line.
        let observer = p.clone();
        crate::provider::http::set_wait_observer(Arc::new(move |why: &str, d| {
            observer.waiting(why, d)
        }));
        Some(p)
    } else {
        None
    };
    let opts = RunOptions {
        apply,
        allow_mass_removal,
        progress,
    };
    let ctx = Ctx::new(Clock::starting_at(SystemTime::now()), interrupt_token());
    let report = reconcile::run(&ctx, &groups, &targets, &opts, audit.as_ref()).await;
    print_report(&report, sel.format, apply);
    match mode {
        Mode::Plan { detailed } => report.exit_code(false, detailed),
        Mode::DryRun => report.exit_code(false, false),
        Mode::Apply => report.exit_code(true, false),
    }
}

/// Cancelled at the first Ctrl-C: no further request is sent (the ones in flight finish), and
/// the run reports what was done. A second Ctrl-C ends the process at once.
fn interrupt_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            crate::eprintln_masked!(
                "interrupted: no further request is sent; Ctrl-C again to quit at once"
            );
            t.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    token
}

/// The groups named by `--group`, or all of them. An unknown name is an error, not an empty run.
fn select(cfg: &Config, names: &[String]) -> Result<Vec<crate::model::DesiredGroup>, String> {
    if names.is_empty() {
        return Ok(cfg.groups.clone());
    }
    let known: BTreeSet<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        return Err(format!("unknown group(s): {}", unknown.join(", ")));
    }
    let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    Ok(cfg
        .groups
        .iter()
        .filter(|g| wanted.contains(g.name.as_str()))
        .cloned()
        .collect())
}

/// Build one client per provider instance the selected groups use. Secrets are resolved here,
/// before any request, so a missing one stops the run with nothing written.
pub fn build_targets(
    cfg: &Config,
    groups: &[crate::model::DesiredGroup],
) -> Result<BTreeMap<String, Target>, String> {
    let used: BTreeSet<&str> = groups.iter().map(|g| g.provider.as_str()).collect();
    let mut targets = BTreeMap::new();
    let mut errors = Vec::new();
    for name in used {
        let Some(instance) = cfg.instances.get(name) else {
            errors.push(format!("provider instance {name} is not defined"));
            continue;
        };
        match crate::provider::build(instance) {
            Ok(provider) => {
                targets.insert(name.to_string(), Target::new(instance.clone(), provider));
            }
            Err(e) => errors.push(format!("provider {name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(errors.join("\n"))
    }
}

/// Print the plan (and, after apply, the outcomes) in the chosen format.
pub fn print_report(report: &Report, format: Format, applied: bool) {
    let plan = report.plan();
    let color = stdout_color();
    let mut out =
        crate::redact::Redacting::new(anstream::AutoStream::never(std::io::stdout().lock()));
    let text = match format {
        Format::Text => {
            let mut s = render::text(&plan, color);
            if applied {
                s.push_str(&outcomes_text(report));
            }
            s
        }
        Format::Markdown => {
            let mut s = render::markdown(&plan);
            if applied {
                s.push_str(&outcomes_text(report));
            }
            s
        }
        Format::Json => {
            let mut doc = render::json(&plan);
            if applied {
                doc["results"] = report_json(report);
            }
            serde_json::to_string_pretty(&doc).expect("plan is JSON") + "\n"
        }
    };
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Per group: what was applied, every failed member by group and id, and remaining drift.
fn outcomes_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for g in &report.groups {
        let ok = g.outcomes.iter().filter(|o| o.outcome.is_ok()).count();
        let failed: Vec<_> = g.outcomes.iter().filter(|o| !o.outcome.is_ok()).collect();
        if g.outcomes.is_empty()
            && failed.is_empty()
            && g.error.is_none()
            && g.drift.as_ref().is_none_or(|d| d.is_empty())
        {
            continue;
        }
        let _ = writeln!(
            s,
            "{} ({}): {} applied, {} failed",
            g.group,
            g.provider,
            ok,
            failed.len()
        );
        for o in failed {
            let why = match &o.outcome {
                Outcome::Failed { code, message } => format!("{code}: {message}"),
                Outcome::Skipped { reason } => format!("skipped: {reason}"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "  failed {} {} in {}: {}",
                o.kind, o.member, g.group, why
            );
        }
        if let Some(e) = &g.error {
            let _ = writeln!(s, "  error: {e}");
        }
        if let Some(d) = g.drift.as_ref().filter(|d| !d.is_empty()) {
            let _ = writeln!(
                s,
                "  drift remains after apply: {} operation(s)",
                d.ops.len()
            );
        }
    }
    s
}

fn report_json(report: &Report) -> serde_json::Value {
    serde_json::Value::Array(
        report
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "group": g.group,
                    "provider": g.provider,
                    "status": g.status,
                    "error": g.error,
                    "outcomes": g.outcomes.iter().map(|o| serde_json::json!({
                        "op": o.kind, "member": o.member, "result": o.outcome,
                    })).collect::<Vec<_>>(),
                    "drift": g.drift.as_ref().map(|d| d.ops.len()).unwrap_or(0),
                })
            })
            .collect(),
    )
}
