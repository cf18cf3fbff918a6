//! An in-memory provider for engine tests (filled in by the engine work).
