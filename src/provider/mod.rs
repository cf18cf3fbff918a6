//! The provider seam: the `Provider` trait every client implements and the error classes the
//! shared HTTP layer acts on. What a kind is (capabilities, ids, settings, schema, client,
//! emulator) is its spec ([`spec`]), one value exported by each provider module.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::model::{Batch, GroupId, LiveGroup, MemberOutcome, OpKind};

pub mod bitrix24;
pub mod cometchat;
pub mod http;
pub mod memory;
pub mod pace;
pub mod rest;
pub mod spec;
pub mod tencent;
pub mod waha;

// The vocabulary lives in `model`; re-exported so clients keep one import line.
pub use crate::model::{BatchLimits, Capabilities, Kind, MuteSupport};
pub use spec::{
    CommonSettings, Instance, KindSettings, KindSpec, SettingError, SettingsInput, build,
};

/// How a failed call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The provider asked us to slow down; retry after the cooldown.
    Throttled,
    /// A passing fault (5xx, timeout, reset); retry with backoff when the call is harmless to repeat.
    Transient,
    /// Retrying will not help (auth, bad request, unknown group, config).
    Fatal,
}

/// A whole call failed. Messages never carry secrets or request URLs.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// The provider's own code where it gave one (`ERR_GUID_NOT_FOUND`, `10007`, ...).
    pub code: Option<String>,
    pub message: String,
    /// Throttled: how long the provider asked us to wait.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn fatal(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Fatal,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Transient,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn throttled(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        ProviderError {
            class: ErrorClass::Throttled,
            code: None,
            message: message.into(),
            retry_after,
        }
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn is_retryable(&self) -> bool {
        !matches!(self.class, ErrorClass::Fatal)
    }
}

/// A provider client. Implementations translate and classify; retries, pacing, waits and
/// credential renewal live once, in [`http`]. Every request goes through the [`Ctx`] handed
/// in: its clock, its cancellation, and its tally, which is where the engine learns how many
/// HTTP requests a call really took.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Every page of the live roster, the owner, and our own id where the provider reveals it.
    /// A partial read is an `Err`, never a short roster.
    async fn fetch(&self, ctx: &Ctx, group: &GroupId) -> Result<LiveGroup, ProviderError>;

    /// One planned batch, in as few HTTP requests as the provider takes (one where it can;
    /// more where its limits or its answers split the batch); one outcome per member, in batch
    /// order. The write requests it sent are counted on `ctx`.
    async fn apply(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batch: &Batch,
    ) -> Result<Vec<MemberOutcome>, ProviderError>;

    /// Whether [`Provider::apply_all`] carries several batches in one request, so the engine
    /// hands it every batch the admin floor lets go together.
    fn packs_batches(&self) -> bool {
        false
    }

    /// Several planned batches of one group, in plan order, in as few requests as the
    /// provider can carry them (kinds mixed); one result per batch. The engine only calls it
    /// where [`Provider::packs_batches`]; defaults to one [`Provider::apply`] per batch.
    async fn apply_all(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        batches: &[Batch],
    ) -> Vec<Result<Vec<MemberOutcome>, ProviderError>> {
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            out.push(self.apply(ctx, group, b).await);
        }
        out
    }

    /// The group again after writes of the kinds in `touched`, to verify them: a provider that
    /// reads its state in parts re-reads only the parts those writes could have changed and
    /// keeps the rest of `before`. Defaults to a whole [`Provider::fetch`].
    async fn refetch(
        &self,
        ctx: &Ctx,
        group: &GroupId,
        _before: &LiveGroup,
        _touched: &BTreeSet<OpKind>,
    ) -> Result<LiveGroup, ProviderError> {
        self.fetch(ctx, group).await
    }

    /// The capabilities in force for one group, where they depend on the live group (Tencent's
    /// group types). Defaults to the kind's static capabilities.
    fn capabilities_for(&self, _live: &LiveGroup) -> Capabilities;

    /// Counts of HTTP requests made so far by this instance (reads, writes), for metrics.
    fn requests(&self) -> RequestCounts {
        RequestCounts::default()
    }
}

/// HTTP requests made by one provider instance, and the pace it learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RequestCounts {
    pub reads: u64,
    pub writes: u64,
    pub throttled: u64,
    pub retries: u64,
    /// Requests per second the instance paces itself at now, where it has a rate cap.
    pub pace: Option<f64>,
}
