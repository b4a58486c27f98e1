//! The follower's Prometheus metrics, labelled by the set's `name`.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::MongoError;

/// Metrics of every followed set; clone it into each follower.
#[derive(Debug, Clone)]
pub struct MongoMetrics {
    primary_known: IntGaugeVec,
    primary_changes: IntCounterVec,
    initiations: IntCounterVec,
    reconfigs: IntCounterVec,
}

fn metric_error(name: &'static str) -> impl FnOnce(prometheus::Error) -> MongoError {
    move |source| MongoError::Metrics { name, source }
}

// === impl MongoMetrics ===

impl MongoMetrics {
    /// Creates the metrics and registers them in `registry`:
    /// `constellation_mongo_primary_known{set}` (1 while a primary is known),
    /// `constellation_mongo_primary_changes_total{set}`,
    /// `constellation_mongo_initiations_total{set}` (`replSetInitiate` done here) and
    /// `constellation_mongo_reconfigs_total{set}` (`replSetReconfig` done here).
    pub fn register(registry: &Registry) -> Result<MongoMetrics, MongoError> {
        const KNOWN: &str = "constellation_mongo_primary_known";
        const CHANGES: &str = "constellation_mongo_primary_changes_total";
        const INITIATIONS: &str = "constellation_mongo_initiations_total";
        const RECONFIGS: &str = "constellation_mongo_reconfigs_total";
        let primary_known =
            IntGaugeVec::new(Opts::new(KNOWN, "1 while the replica set's writable primary is known, else 0"), &["set"])
                .map_err(metric_error(KNOWN))?;
        let primary_changes =
            IntCounterVec::new(Opts::new(CHANGES, "Times the followed primary changed (to none included)"), &["set"])
                .map_err(metric_error(CHANGES))?;
        let initiations =
            IntCounterVec::new(Opts::new(INITIATIONS, "Successful replSetInitiate calls made by this node"), &["set"])
                .map_err(metric_error(INITIATIONS))?;
        let reconfigs =
            IntCounterVec::new(Opts::new(RECONFIGS, "Successful replSetReconfig calls made by this node"), &["set"])
                .map_err(metric_error(RECONFIGS))?;
        registry.register(Box::new(primary_known.clone())).map_err(metric_error(KNOWN))?;
        registry.register(Box::new(primary_changes.clone())).map_err(metric_error(CHANGES))?;
        registry.register(Box::new(initiations.clone())).map_err(metric_error(INITIATIONS))?;
        registry.register(Box::new(reconfigs.clone())).map_err(metric_error(RECONFIGS))?;
        Ok(MongoMetrics { primary_known, primary_changes, initiations, reconfigs })
    }

    pub(super) fn set_primary_known(&self, set: &str, known: bool) {
        self.primary_known.with_label_values(&[set]).set(i64::from(known));
    }

    pub(super) fn primary_changed(&self, set: &str) {
        self.primary_changes.with_label_values(&[set]).inc();
    }

    pub(super) fn initiated(&self, set: &str) {
        self.initiations.with_label_values(&[set]).inc();
    }

    pub(super) fn reconfigured(&self, set: &str) {
        self.reconfigs.with_label_values(&[set]).inc();
    }

    /// `constellation_mongo_initiations_total{set}` now.
    pub fn initiations(&self, set: &str) -> u64 {
        self.initiations.with_label_values(&[set]).get()
    }

    /// `constellation_mongo_reconfigs_total{set}` now.
    pub fn reconfigs(&self, set: &str) -> u64 {
        self.reconfigs.with_label_values(&[set]).get()
    }
}
