//! The one integration-test binary: real HTTP against the sandbox emulators on 127.0.0.1.

mod bitrix24;
mod bound;
mod cli;
mod cometchat;
mod daemon;
mod daemon_waha;
mod deploy;
mod fuzz_corpus;
mod import;
mod page;
mod redact;
mod support;
mod tencent;
mod tls;
mod waha;
