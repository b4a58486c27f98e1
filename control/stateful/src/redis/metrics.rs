//! Prometheus metrics of the Redis Sentinel followers, shared by every group.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The followers' metrics; clone it into each [`super::spawn`].
#[derive(Clone)]
pub struct RedisMetrics {
    /// `constellation_redis_master_known{group}`: 1 while a trusted master is published.
    pub master_known: IntGaugeVec,
    /// `constellation_redis_switches_total{group}`: trusted master changes.
    pub switches: IntCounterVec,
    /// `constellation_redis_sentinel_errors_total{group,sentinel}`: failed sentinel queries.
    pub sentinel_errors: IntCounterVec,
    /// `constellation_redis_withdrawn_total{group,reason}`: times the master was withdrawn,
    /// by verdict.
    pub withdrawn: IntCounterVec,
    /// `constellation_redis_setup_commands_total{group,command}`: set-up commands applied
    /// (`REPLICAOF`, `SENTINEL MONITOR`, `SENTINEL SET`).
    pub setup_commands: IntCounterVec,
}

impl RedisMetrics {
    /// Creates the metrics and registers them on `registry`.
    ///
    /// # Errors
    /// When a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let master_known = IntGaugeVec::new(
            Opts::new("constellation_redis_master_known", "1 while the Redis group's master is known and trusted"),
            &["group"],
        )?;
        let switches = IntCounterVec::new(
            Opts::new("constellation_redis_switches_total", "Changes of the Redis group's trusted master"),
            &["group"],
        )?;
        let sentinel_errors = IntCounterVec::new(
            Opts::new("constellation_redis_sentinel_errors_total", "Failed queries to a sentinel"),
            &["group", "sentinel"],
        )?;
        let withdrawn = IntCounterVec::new(
            Opts::new("constellation_redis_withdrawn_total", "Times the Redis group's route was withdrawn, by reason"),
            &["group", "reason"],
        )?;
        let setup_commands = IntCounterVec::new(
            Opts::new("constellation_redis_setup_commands_total", "Set-up commands applied to Redis and sentinels"),
            &["group", "command"],
        )?;
        registry.register(Box::new(master_known.clone()))?;
        registry.register(Box::new(switches.clone()))?;
        registry.register(Box::new(sentinel_errors.clone()))?;
        registry.register(Box::new(withdrawn.clone()))?;
        registry.register(Box::new(setup_commands.clone()))?;
        Ok(RedisMetrics { master_known, switches, sentinel_errors, withdrawn, setup_commands })
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        // Registering on a fresh registry cannot collide.
        match Self::register(&Registry::new()) {
            Ok(m) => m,
            Err(e) => unreachable!("fresh registry refused the Redis metrics: {e}"),
        }
    }
}
