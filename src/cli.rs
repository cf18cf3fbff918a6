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
use crate::plan::saved::SavedPlan;
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
        /// Also write the JSON plan, with each group's checksum, to FILE (for `apply --plan`).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
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
        /// Apply exactly this reviewed plan (from `plan --out`): a group whose files or live
        /// roster changed since is refused; the others are applied.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
    },
    /// Write manifests for live groups, naming members by their people.yaml person where one
    /// matches; `plan` then shows no change for them.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// The provider instance (from rosterd.yaml) the groups belong to.
        #[arg(long, value_name = "INSTANCE")]
        provider: String,
        /// Provider group ids; repeatable.
        #[arg(long = "id", value_name = "GROUP_ID", required = true, num_args = 1..)]
        ids: Vec<String>,
        /// Folder for the manifests; default: the first folder of `manifests:`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Also write a people.yaml stub for the ids no person matched.
        #[arg(long, value_name = "FILE")]
        people_stub: Option<PathBuf>,
    },
    /// Where a person, @team or raw id is listed, with role, list, team chain and ids; with
    /// --without, what removing them would plan. Files only unless --live.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// A person of people.yaml, a @team, or a raw provider id.
        name: String,
        /// Show the blast radius of removing them from people.yaml or the team.
        #[arg(long)]
        without: bool,
        /// Also read the groups that list them (needs the providers' secrets).
        #[arg(long)]
        live: bool,
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
            out,
        } => {
            let mode = Mode::Plan {
                detailed: detailed_exitcode,
            };
            let files = PlanFiles {
                out: out.as_deref(),
                saved: None,
            };
            reconcile_cmd(&sel, mode, false, files).await
        }
        Command::Apply {
            sel,
            allow_mass_removal,
            dry_run,
            plan,
        } => {
            let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
            let files = PlanFiles {
                out: None,
                saved: plan.as_deref(),
            };
            reconcile_cmd(&sel, mode, allow_mass_removal, files).await
        }
        Command::Import {
            config,
            provider,
            ids,
            out,
            force,
            people_stub,
        } => {
            let opts = crate::import::ImportOptions {
                config: config.config,
                provider,
                ids,
                out,
                force,
                people_stub,
            };
            let ctx = Ctx::new(Clock::starting_at(SystemTime::now()), interrupt_token());
            crate::import::run(&ctx, &opts, &mut std::io::stdout(), &mut std::io::stderr()).await
        }
        Command::Explain {
            config,
            name,
            without,
            live,
        } => explain_cmd(&config.config, &name, without, live).await,
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

async fn explain_cmd(path: &Path, name: &str, without: bool, live: bool) -> u8 {
    use crate::explain;
    let loaded = config::load(path).and_then(|c| Ok((c, config::load_context(path)?)));
    let (cfg, ctx) = match loaded {
        Ok(c) => c,
        Err(diags) => {
            eprint!("{diags}");
            eprintln!("{} error(s)", diags.0.len());
            return exit::ERROR;
        }
    };
    let target = match explain::Target::parse(&ctx, name) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ERROR;
        }
    };
    let run = Ctx::new(Clock::starting_at(SystemTime::now()), interrupt_token());
    let state = if live {
        match explain::read_live(&run, &cfg, &ctx, &target).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::ERROR;
            }
        }
    } else {
        None
    };
    let now = SystemTime::now();
    let mut out = explain::explain(&cfg, &ctx, &target, state.as_ref());
    if without {
        out.push('\n');
        out.push_str(&explain::blast_radius(
            &cfg,
            &ctx,
            &target,
            state.as_ref(),
            now,
        ));
    }
    print!("{out}");
    let unreadable = state.iter().flat_map(|s| s.values()).any(Result::is_err);
    if unreadable { exit::FAILED } else { exit::OK }
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

/// `plan --out` and `apply --plan`.
#[derive(Debug, Clone, Copy)]
struct PlanFiles<'a> {
    out: Option<&'a Path>,
    saved: Option<&'a Path>,
}

/// Load, select, build the clients, run the engine, print, and compute the exit code.
async fn reconcile_cmd(
    sel: &Selection,
    mode: Mode,
    allow_mass_removal: bool,
    files: PlanFiles<'_>,
) -> u8 {
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
    let mut groups = match select(&cfg, &sel.groups) {
        Ok(g) => g,
        Err(e) => {
            crate::eprintln_masked!("error: {e}");
            return exit::ERROR;
        }
    };
    let tree = crate::plan::checksum::tree(
        cfg.instances
            .values()
            .map(|i| (i.name.as_str(), i.kind.as_str())),
    );
    // A reviewed plan: only its groups run, each checked against it right after its read.
    let mut gone = Vec::new();
    let check = match files.saved {
        None => None,
        Some(path) => {
            let saved = match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| SavedPlan::parse(&t, &tree))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: plan {}: {e}", path.display());
                    eprintln!("nothing was written");
                    return exit::ERROR;
                }
            };
            let known: BTreeSet<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
            gone = saved
                .groups
                .keys()
                .filter(|n| !known.contains(n.as_str()))
                .filter(|n| sel.groups.is_empty() || sel.groups.contains(n))
                .cloned()
                .collect();
            let skipped = groups
                .iter()
                .filter(|g| !saved.groups.contains_key(&g.name))
                .count();
            if skipped > 0 {
                eprintln!("{skipped} group(s) of the tree are not in the plan: not applied");
            }
            groups.retain(|g| saved.groups.contains_key(&g.name));
            let saved = Arc::new(saved);
            let check: reconcile::PlanCheck = Arc::new(move |g, p| saved.check(g, p));
            Some(check)
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
        check,
    };
    let ctx = Ctx::new(Clock::starting_at(SystemTime::now()), interrupt_token());
    let report = reconcile::run(&ctx, &groups, &targets, &opts, audit.as_ref()).await;
    print_report(&report, sel.format, apply);
    for name in &gone {
        println!(
            "group {name}: refused: it is in the reviewed plan but no longer in the manifests; nothing applied"
        );
    }
    if let Some(out) = files.out {
        let mut doc = render::json(&report.plan());
        doc["tree"] = serde_json::Value::String(tree);
        let text = serde_json::to_string_pretty(&doc).expect("plan is JSON") + "\n";
        if let Err(e) = write_atomically(out, &text) {
            eprintln!("error: cannot write the plan to {}: {e}", out.display());
            return exit::ERROR;
        }
    }
    let code = match mode {
        Mode::Plan { detailed } => report.exit_code(false, detailed),
        Mode::DryRun => report.exit_code(false, false),
        Mode::Apply => report.exit_code(true, false),
    };
    if !gone.is_empty() && code < exit::FAILED {
        exit::FAILED
    } else {
        code
    }
}

/// Write a file through a temporary one beside it, so a reader never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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
            let who = g.who(&o.member);
            let _ = writeln!(s, "  failed {} {who} in {}: {why}", o.kind, g.group);
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
                        "op": o.kind, "member": o.member,
                        "name": g.plan.as_ref().and_then(|p| p.name_of(&o.member)),
                        "result": o.outcome,
                    })).collect::<Vec<_>>(),
                    "drift": g.drift.as_ref().map(|d| d.ops.len()).unwrap_or(0),
                })
            })
            .collect(),
    )
}
