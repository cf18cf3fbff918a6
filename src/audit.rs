//! The audit log: one JSON line per write call and per member outcome, no secrets.
