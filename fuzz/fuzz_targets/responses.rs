//! See `harness/responses.rs`.
#![no_main]

#[path = "../harness/responses.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
