//! Loading and validating 10,000 group manifests with 1,000,000 member entries.
//! Run: `cargo bench --bench load` (generates the tree in a temporary folder first).
//!
//! For a peak-RSS figure of the load alone, the binary also runs outside criterion:
//! `ROSTERD_BENCH_GENERATE=DIR` writes the tree and exits, then `ROSTERD_BENCH_LOAD=DIR`
//! loads it once and exits, so `/usr/bin/time -v` on the second run measures only `load`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group};

pub const GROUPS: usize = 10_000;
pub const PER_GROUP: usize = 100;

/// Write the tree: rosterd.yaml, people.yaml (1,000 people, 100 teams), and 1,000 manifest
/// files of 10 documents each. Every group lists 100 entries: people, a team and raw ids.
pub fn generate(dir: &Path) {
    std::fs::create_dir_all(dir.join("groups")).unwrap();
    std::fs::write(
        dir.join("rosterd.yaml"),
        "manifests: groups/\npeople: people.yaml\ndefaults: { unlisted: remove, max_removals: 10% }\nproviders:\n  cc:\n    kind: cometchat\n    app_id: bench\n    region: eu\n    api_key: { env: COMETCHAT_API_KEY }\n",
    )
    .unwrap();
    let mut people = String::from("people:\n");
    for p in 0..1000 {
        writeln!(people, "  p{p:04}: {{ cometchat: user-{p:04} }}").unwrap();
    }
    people.push_str("teams:\n");
    for t in 0..100 {
        writeln!(
            people,
            "  t{t:03}: [p{:04}, p{:04}, p{:04}]",
            t * 10,
            t * 10 + 1,
            t * 10 + 2
        )
        .unwrap();
    }
    std::fs::write(dir.join("people.yaml"), people).unwrap();
    for f in 0..GROUPS / 10 {
        let mut text = String::new();
        for d in 0..10 {
            let g = f * 10 + d;
            writeln!(
                text,
                "---\ngroup: g{g:05}\nprovider: cc\nid: g{g:05}\nadmins: [p{:04}]\nparticipants:",
                g % 1000
            )
            .unwrap();
            writeln!(text, "  - \"@t{:03}\"", g % 100).unwrap();
            for i in 0..PER_GROUP - 2 {
                if i % 2 == 0 {
                    writeln!(text, "  - p{:04}", (g + i) % 1000).unwrap();
                } else {
                    writeln!(text, "  - raw-{g}-{i}").unwrap();
                }
            }
        }
        std::fs::write(dir.join(format!("groups/f{f:04}.yaml")), text).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let cfg = dir.path().join("rosterd.yaml");
    let loaded = rosterd::config::load(&cfg).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(loaded.groups.len(), GROUPS);
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("load + validate 10k groups, 1M entries", |b| {
        b.iter(|| black_box(rosterd::config::load(&cfg).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    // Kept apart from criterion so the process's peak RSS reflects a single load, not the
    // generator or criterion's sample buffers.
    // ROSTERD_BENCH_TREE is the same switch under the name used for measuring
    // `rosterd validate` on the tree from outside.
    if let Some(dir) = std::env::var_os("ROSTERD_BENCH_GENERATE")
        .or_else(|| std::env::var_os("ROSTERD_BENCH_TREE"))
    {
        generate(Path::new(&dir));
        return;
    }
    if let Some(dir) = std::env::var_os("ROSTERD_BENCH_LOAD") {
        let started = std::time::Instant::now();
        let cfg = rosterd::config::load(&Path::new(&dir).join("rosterd.yaml"))
            .unwrap_or_else(|d| panic!("{d}"));
        let entries: usize = cfg
            .groups
            .iter()
            .map(|g| g.members.len() + g.bans.as_ref().map_or(0, |b| b.len()))
            .sum();
        println!(
            "loaded {} groups, {entries} members in {:?}",
            cfg.groups.len(),
            started.elapsed()
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
