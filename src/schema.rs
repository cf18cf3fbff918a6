//! JSON Schema (draft-07) of rosterd.yaml, people.yaml and group manifests, for editors.
