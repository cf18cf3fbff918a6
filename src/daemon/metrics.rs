//! Prometheus metrics of the daemon. Labels stay low-cardinality: provider instance, operation,
//! outcome, result, and group names from the files — never member ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub provider: String,
    pub op: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

/// Every metric the daemon exports, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub operations: Family<OpLabels, Counter>,
    pub api_requests: Family<ProviderLabel, Counter>,
    pub throttled: Family<ProviderLabel, Counter>,
    /// The pace each instance learned from its provider's throttle signals.
    pub pace: Family<ProviderLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub drift: Family<GroupLabel, Gauge>,
    pub last_success: Family<GroupLabel, Gauge>,
    pub manifest_errors: Gauge,
    pub groups: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("rosterd");
        let m = Metrics {
            reconciles: Family::default(),
            operations: Family::default(),
            api_requests: Family::default(),
            throttled: Family::default(),
            pace: Family::default(),
            drift: Family::default(),
            last_success: Family::default(),
            manifest_errors: Gauge::default(),
            groups: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Group reconciliations by result",
            m.reconciles.clone(),
        );
        registry.register(
            "operations",
            "Member operations by provider, operation and outcome",
            m.operations.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP requests to providers",
            m.api_requests.clone(),
        );
        registry.register(
            "throttled",
            "Throttle answers obeyed, by provider",
            m.throttled.clone(),
        );
        registry.register(
            "pace_requests_per_second",
            "Requests per second each provider instance paces itself at, as learned from throttle signals (never above its configured rate)",
            m.pace.clone(),
        );
        registry.register(
            "drift_operations",
            "Operations still needed after the last run, per group",
            m.drift.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last run that left the group in sync",
            m.last_success.clone(),
        );
        registry.register(
            "manifest_errors",
            "Problems in the files right now",
            m.manifest_errors.clone(),
        );
        registry.register(
            "managed_groups",
            "Groups declared by the files in force",
            m.groups.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_in_the_text_format_with_low_cardinality_labels() {
        let m = Metrics::default();
        m.reconciles
            .get_or_create(&ResultLabel {
                result: "applied".into(),
            })
            .inc();
        m.operations
            .get_or_create(&OpLabels {
                provider: "cc".into(),
                op: "add".into(),
                outcome: "done".into(),
            })
            .inc_by(3);
        m.manifest_errors.set(2);
        let text = m.encode();
        assert!(
            text.contains("rosterd_reconciles_total{result=\"applied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "rosterd_operations_total{provider=\"cc\",op=\"add\",outcome=\"done\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("rosterd_manifest_errors 2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
