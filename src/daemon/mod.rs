//! `rosterd run`: the daemon. Watches the files, keeps the last valid version of each, and
//! reconciles groups on change and on a resync timer (SPEC §6).

pub mod metrics;
pub mod state;
