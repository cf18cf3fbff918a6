//! rosterd keeps chat-group membership equal to YAML manifests kept in git.
//!
//! Reading order: [`model`] (the vocabulary), [`config`] (files -> desired state), [`provider`]
//! (the seam and the clients), [`plan`] (pure diff, order, batches, safety, rendering),
//! [`reconcile`] (fetch -> plan -> apply -> verify), [`audit`], [`sandbox`] (emulators),
//! [`schema`], [`cli`].

pub mod audit;
pub mod cli;
pub mod config;
pub mod ctx;
pub mod daemon;
pub mod demo;
pub mod explain;
pub mod import;
pub mod model;
pub mod plan;
pub mod provider;
pub mod reconcile;
pub mod redact;
pub mod sandbox;
pub mod schema;
