//! Planning one 100,000-member group with 10% drift (adds, removals, role changes).
//! Run: `cargo bench --bench plan`

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use rosterd::model::{DesiredGroup, GroupId, LiveGroup, MemberId, RemovalLimit, Role, Unlisted};
use rosterd::plan::{PlanOptions, plan_group};
use rosterd::provider::Kind;

const MEMBERS: usize = 100_000;

fn role(i: usize) -> Role {
    match i % 50 {
        0 => Role::Admin,
        1..=4 => Role::Moderator,
        _ => Role::Participant,
    }
}

/// Desired: u0..u100000. Live: the same minus 4% (to add), plus 4% strangers (to remove), with
/// 2% of roles wrong: 10% drift in all.
fn states() -> (DesiredGroup, LiveGroup) {
    let id = |i: usize| MemberId(format!("u{i:06}"));
    let members: BTreeMap<MemberId, Role> = (0..MEMBERS).map(|i| (id(i), role(i))).collect();
    let mut live: BTreeMap<MemberId, Role> = BTreeMap::new();
    for i in 0..MEMBERS {
        match i % 100 {
            0..=3 => {} // missing: add
            4..=5 => drop(live.insert(
                id(i),
                if role(i) == Role::Participant {
                    Role::Moderator
                } else {
                    Role::Participant
                },
            )),
            _ => drop(live.insert(id(i), role(i))),
        }
    }
    for i in 0..MEMBERS * 4 / 100 {
        live.insert(MemberId(format!("x{i:06}")), Role::Participant); // unlisted: remove
    }
    let desired = DesiredGroup {
        name: "big".into(),
        provider: "cc".into(),
        kind: Kind::Cometchat,
        id: GroupId("big".into()),
        owner: None,
        members,
        bans: Some(BTreeSet::new()),
        mutes: None,
        unlisted: Unlisted::Remove,
        max_removals: RemovalLimit::Percent(10.0),
        protected: BTreeSet::new(),
        source: "bench".into(),
        names: Default::default(),
    };
    let live = LiveGroup {
        members: live,
        bans: Some(BTreeSet::new()),
        ..LiveGroup::default()
    };
    (desired, live)
}

fn bench(c: &mut Criterion) {
    let (desired, live) = states();
    let caps = Kind::Cometchat.capabilities();
    let size = |k| caps.max_batch.get(k);
    let opts = PlanOptions {
        caps,
        batch_size: &size,
        now: SystemTime::now(),
        allow_mass_removal: false,
    };
    let p = plan_group(&desired, &live, &opts);
    assert_eq!(p.ops.len(), 10_000, "10% drift");
    c.bench_function("plan 100k members, 10% drift", |b| {
        b.iter(|| black_box(plan_group(black_box(&desired), black_box(&live), &opts)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
