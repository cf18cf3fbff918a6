//! Loading the files: rosterd.yaml, people.yaml and the group manifests, from raw serde types
//! to the validated model, every error collected with its file, line and column.

pub mod secret;
