//! `rosterd demo`: the whole road on the demo tree, with no account anywhere. Starts the
//! sandbox in-process on ephemeral loopback ports (seeded from `manifests/sandbox-state.yaml`,
//! a world that has drifted from the manifests in every way), points every provider instance
//! that has an emulator at it, prints the plan, applies it, and prints a second plan that
//! shows nothing left to do.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::config;
use crate::ctx::Ctx;
use crate::model::{DesiredGroup, Outcome};
use crate::plan::render;
use crate::provider::Instance;
use crate::reconcile::{self, GroupStatus, Report, RunOptions, Target};
use crate::sandbox::{Ports, Sandbox, SandboxState, default_state};

/// The sandbox is on this machine: pace it faster than a real provider's default so the demo
/// takes seconds, while keeping the same code path (rate cap included).
const DEMO_RATE: f64 = 50.0;

/// Run the demo on the tree in `manifests_dir` (its `rosterd.yaml`), writing everything to
/// `out`. Returns the exit code: 0 when the apply converged and the second plan is empty.
pub async fn demo(manifests_dir: &Path, out: &mut dyn Write, color: bool) -> anyhow::Result<u8> {
    let config_path = manifests_dir.join("rosterd.yaml");
    let config = match config::load(&config_path) {
        Ok(c) => c,
        Err(diags) => {
            writeln!(out, "{diags}")?;
            return Ok(1);
        }
    };
    let state_path = manifests_dir.join("sandbox-state.yaml");
    let state = if state_path.exists() {
        SandboxState::load(&state_path)?
    } else {
        default_state()?
    };

    let sandbox = Sandbox::start(state.clone(), Ports::EPHEMERAL, CancellationToken::new()).await?;
    let result = run(
        &config.instances,
        &config.groups,
        &state,
        &sandbox,
        out,
        color,
    )
    .await;
    sandbox.shutdown().await;
    result
}

async fn run(
    instances: &BTreeMap<String, Instance>,
    groups: &[DesiredGroup],
    state: &SandboxState,
    sandbox: &Sandbox,
    out: &mut dyn Write,
    color: bool,
) -> anyhow::Result<u8> {
    for e in sandbox.endpoints() {
        writeln!(out, "sandbox: {} emulator at {}", e.kind, e.base_url)?;
    }
    let mut targets = BTreeMap::new();
    for (name, instance) in instances {
        match sandbox_target(instance, state, sandbox)? {
            Some(t) => {
                targets.insert(name.clone(), t);
            }
            None => writeln!(
                out,
                "sandbox: no {} emulator yet; instance {name} is left out",
                instance.kind
            )?,
        }
    }
    let groups: Vec<DesiredGroup> = groups
        .iter()
        .filter(|g| targets.contains_key(&g.provider))
        .cloned()
        .collect();
    if groups.is_empty() {
        writeln!(
            out,
            "no group of the demo tree has an emulator to run against"
        )?;
        return Ok(1);
    }

    let opts = |apply: bool| RunOptions {
        apply,
        ..RunOptions::default()
    };
    let ctx = Ctx::at(SystemTime::now());

    writeln!(out, "\n== plan ==")?;
    let first = reconcile::run(&ctx, &groups, &targets, &opts(false), None).await;
    write!(out, "{}", render::text(&first.plan(), color))?;

    writeln!(out, "\n== apply ==")?;
    let applied = reconcile::run(&ctx, &groups, &targets, &opts(true), None).await;
    summarize(&applied, out)?;

    writeln!(out, "\n== plan after apply ==")?;
    let second = reconcile::run(&ctx, &groups, &targets, &opts(false), None).await;
    write!(out, "{}", render::text(&second.plan(), color))?;

    let code = applied.exit_code(true, false);
    if code != 0 {
        return Ok(code);
    }
    Ok(
        if second.plan().is_empty() && second.exit_code(false, false) == 0 {
            0
        } else {
            3
        },
    )
}

/// The client of one instance, pointed at its emulator, or `None` when the sandbox has no
/// emulator for its kind yet.
fn sandbox_target(
    instance: &Instance,
    state: &SandboxState,
    sandbox: &Sandbox,
) -> anyhow::Result<Option<Target>> {
    let Some(base_url) = sandbox.base_url(instance.kind) else {
        return Ok(None);
    };
    let mut instance = instance.clone();
    instance.common.base_url = Some(base_url.to_string());
    instance.common.interval = None;
    instance.common.rate = Some(instance.common.rate.map_or(DEMO_RATE, |r| r.max(DEMO_RATE)));
    let provider = (instance.kind.spec().sandbox_client)(&mut instance, state)?;
    Ok(Some(Target::new(instance, provider)))
}

/// One line per group, and one per member whose operation failed.
fn summarize(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    for g in &report.groups {
        let status = match g.status {
            GroupStatus::InSync => "in sync",
            GroupStatus::Changes => "changes pending",
            GroupStatus::Applied => "applied and verified",
            GroupStatus::Failed => "FAILED",
            GroupStatus::Blocked => "BLOCKED by a safety limit",
        };
        let ok = g.outcomes.iter().filter(|o| o.outcome.is_ok()).count();
        writeln!(
            out,
            "group {}: {status} ({} operations in {} calls)",
            g.group, ok, g.calls
        )?;
        if let Some(e) = &g.error {
            writeln!(out, "  error: {e}")?;
        }
        for o in g.failed_ops() {
            let why = match &o.outcome {
                Outcome::Failed { code, message } => format!("{code}: {message}"),
                Outcome::Skipped { reason } => format!("skipped: {reason}"),
                _ => String::new(),
            };
            writeln!(out, "  {} {} failed: {why}", o.kind, o.member)?;
        }
    }
    Ok(())
}
