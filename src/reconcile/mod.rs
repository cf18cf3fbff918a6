//! The reconcile engine: per group fetch -> plan -> safety -> apply batches -> re-fetch -> drift.
