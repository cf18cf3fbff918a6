//! See `harness/load_tree.rs`.
#![no_main]

#[path = "../harness/load_tree.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
