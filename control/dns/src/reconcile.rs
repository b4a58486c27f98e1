//! The reconciler: lists the managed names, plans the minimal diff, checks the fence and
//! writes. One reconciliation at a time; every error is returned, and the next cycle
//! starts again from the zone as it is.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use serde_json::Value;
use tracing::{info, warn};

use super::api::{CreateRecord, DeleteRecord, PatchRecord, RecordBody, RecordFilter};
use super::client::RetryPolicy;
use super::config::DnsConfig;
use super::desired::Desired;
use super::metrics::DnsMetrics;
use super::plan::{plan, Ownership, Plan};
use super::record::{Record, RecordType, RemoteRecord};
use super::txt::AcmeTxt;
use super::zone::{lock, Zone};
use super::DnsError;

/// What one reconciliation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The zone now matches (counts of what was written; all zero when it already did).
    Applied(Applied),
    /// The fence said this node no longer holds `dns-writer`: nothing (more) was written.
    Deposed {
        /// Writes that were planned and dropped.
        dropped: usize,
    },
    /// No token: the plan (against an empty zone) was logged, nothing was sent.
    DryRun(Plan),
}

/// Counts of one applied reconciliation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records created.
    pub created: usize,
    /// Records updated in place.
    pub updated: usize,
    /// Records deleted.
    pub deleted: usize,
    /// Writes that put back a record changed or removed behind our back.
    pub drift_corrections: usize,
    /// Records without our marker left in the way of a desired one.
    pub skipped_unowned: usize,
}

/// Reconciles the Cloudflare zone with the desired records. Cheap to share behind an `Arc`.
pub struct Reconciler {
    cfg: DnsConfig,
    zone: Arc<Zone>,
    metrics: DnsMetrics,
    owner: Ownership,
    /// Records known to be in place after the last good cycle: a later write to one of
    /// them, with the same desired content, is a drift correction.
    synced: Mutex<HashMap<(String, RecordType), Record>>,
    last_skipped: Mutex<BTreeSet<String>>,
    cycle: tokio::sync::Mutex<()>,
}

impl Reconciler {
    /// Validates `cfg`, registers the metrics in `registry` and builds the client (none
    /// without a token: dry run).
    pub fn new(cfg: DnsConfig, registry: &Registry) -> Result<Reconciler, DnsError> {
        Reconciler::with_retry(cfg, registry, RetryPolicy::default())
    }

    /// [`Reconciler::new`] with an explicit retry policy.
    pub fn with_retry(cfg: DnsConfig, registry: &Registry, retry: RetryPolicy) -> Result<Reconciler, DnsError> {
        cfg.validate()?;
        let zone = Zone::new(&cfg, registry, retry)?;
        let owner = Ownership { marker: cfg.marker(), adopt: cfg.adopt };
        Ok(Reconciler {
            metrics: zone.metrics().clone(),
            zone,
            cfg,
            owner,
            synced: Mutex::new(HashMap::new()),
            last_skipped: Mutex::new(BTreeSet::new()),
            cycle: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    /// True when there is no token: plans are logged, nothing is sent.
    pub fn is_dry_run(&self) -> bool {
        self.zone.api().is_none()
    }

    /// A dns-01 TXT writer sharing this reconciler's client, request budget, zone id and
    /// metrics (one process should not run two budgets against one Cloudflare account).
    pub fn acme_txt(&self) -> AcmeTxt {
        AcmeTxt::from_zone(self.zone.clone(), &self.cfg)
    }

    /// The zone id: configured, or looked up once by name (`GET zones?name=`).
    pub async fn zone_id(&self) -> Result<String, DnsError> {
        self.zone.id().await
    }

    /// The records at every name of `desired`, plus our own records anywhere in the zone.
    pub async fn list_current(&self, desired: &Desired) -> Result<Vec<RemoteRecord>, DnsError> {
        let zone_id = self.zone_id().await?;
        let mut out = Vec::new();
        for name in desired.names() {
            out.extend(self.list(&zone_id, RecordFilter::Name(name)).await?);
        }
        out.extend(self.list(&zone_id, RecordFilter::Comment(self.owner.marker.clone())).await?);
        Ok(out)
    }

    async fn list(&self, zone_id: &str, filter: RecordFilter) -> Result<Vec<RemoteRecord>, DnsError> {
        self.zone.list(zone_id, filter).await
    }

    /// One reconciliation: list, plan, then — right before the first write — `fence()`;
    /// false drops every pending write and returns [`Outcome::Deposed`]. A batch that runs
    /// long (rate limits, retries) asks the fence again before each further write.
    pub async fn reconcile<F, Fut>(&self, desired: &Desired, fence: F) -> Result<Outcome, DnsError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let _cycle = self.cycle.lock().await;
        let Some(api) = self.zone.api() else {
            let plan = plan(desired, &[], &self.owner);
            for r in &plan.create {
                info!(name = %r.name, r#type = %r.kind, content = %r.content, "dry run (no DNS API token): would write record");
            }
            return Ok(Outcome::DryRun(plan));
        };
        let zone_id = self.zone_id().await?;
        let current = self.list_current(desired).await?;
        let plan = plan(desired, &current, &self.owner);
        self.report_skipped(&plan);
        let skipped_names: BTreeSet<String> = plan.skipped_unowned.iter().map(|r| r.name.clone()).collect();
        let mut applied = Applied { skipped_unowned: plan.skipped_unowned.len(), ..Applied::default() };

        let total = plan.writes();
        if total > 0 {
            if !fence().await {
                return Ok(self.deposed(total));
            }
            let mut first_err: Option<DnsError> = None;
            let mut failed = 0;
            let synced = lock(&self.synced).clone();
            let is_drift = |r: &Record| synced.get(&r.key()) == Some(r);
            let mut done = 0;

            let ops = plan
                .update
                .iter()
                .map(Op::Update)
                .chain(plan.create.iter().map(Op::Create))
                .chain(plan.delete.iter().map(Op::Delete));
            for op in ops {
                // Every write is fenced: a batch slowed by rate limits must not outlive
                // the lease that allowed it.
                if done > 0 && !fence().await {
                    return Ok(self.deposed(total - done));
                }
                done += 1;
                let result = match op {
                    Op::Update(u) => {
                        if u.adopt {
                            warn!(name = %u.to.name, r#type = %u.to.kind, id = %u.from.id, "adopting a DNS record without our marker (dns.adopt = true)");
                        }
                        let ep = PatchRecord {
                            zone_id: zone_id.clone(),
                            id: u.from.id.clone(),
                            body: RecordBody::new(&u.to, &self.owner.marker),
                        };
                        api.call_write("update_record", &ep).await.map(|_| {
                            info!(name = %u.to.name, r#type = %u.to.kind, from = %u.from.content, to = %u.to.content, "DNS record updated");
                            applied.updated += 1;
                            ("update", is_drift(&u.to))
                        })
                    }
                    Op::Create(r) => {
                        let ep =
                            CreateRecord { zone_id: zone_id.clone(), body: RecordBody::new(r, &self.owner.marker) };
                        api.call_write("create_record", &ep).await.map(|resp| {
                            let id = resp.result.0.get("id").and_then(Value::as_str).unwrap_or("?").to_string();
                            info!(name = %r.name, r#type = %r.kind, content = %r.content, id = %id, "DNS record created");
                            applied.created += 1;
                            ("create", is_drift(r))
                        })
                    }
                    Op::Delete(r) => {
                        let ep = DeleteRecord { zone_id: zone_id.clone(), id: r.id.clone() };
                        api.call_write("delete_record", &ep).await.map(|_| {
                            info!(name = %r.name, r#type = %r.kind, content = %r.content, "DNS record deleted");
                            applied.deleted += 1;
                            ("delete", false)
                        })
                    }
                };
                match result {
                    Ok((op, drift)) => {
                        self.metrics.writes.with_label_values(&[op]).inc();
                        if drift {
                            self.metrics.drift.inc();
                            applied.drift_corrections += 1;
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        let stop = !matches!(e, DnsError::Api { .. } | DnsError::Decode { .. });
                        warn!(error = %e, "DNS write failed; the next cycle tries again");
                        first_err.get_or_insert(e);
                        if stop {
                            // Auth errors and exhausted retries would fail the rest too.
                            failed += total - done;
                            break;
                        }
                    }
                }
            }
            if let Some(first) = first_err {
                lock(&self.synced).clear();
                let applied = applied.created + applied.updated + applied.deleted;
                return Err(DnsError::Incomplete { applied, failed, first: Box::new(first) });
            }
        }
        *lock(&self.synced) =
            desired.records.iter().filter(|r| !skipped_names.contains(&r.name)).map(|r| (r.key(), r.clone())).collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.metrics.last_success.set(i64::try_from(now).unwrap_or(i64::MAX));
        Ok(Outcome::Applied(applied))
    }

    fn deposed(&self, dropped: usize) -> Outcome {
        warn!(dropped, "deposed; dropping {dropped} pending writes");
        // Another writer may change the zone meanwhile; that is not drift.
        lock(&self.synced).clear();
        Outcome::Deposed { dropped }
    }

    fn report_skipped(&self, plan: &Plan) {
        let now: BTreeSet<String> = plan.skipped_unowned.iter().map(|r| format!("{} {}", r.name, r.kind)).collect();
        let mut last = lock(&self.last_skipped);
        if *last != now {
            for r in &plan.skipped_unowned {
                warn!(name = %r.name, r#type = %r.kind, id = %r.id, "DNS record without our ownership comment is in the way; left untouched (set dns.adopt = true to take it over)");
            }
            *last = now;
        }
    }
}

enum Op<'a> {
    Update(&'a super::plan::Update),
    Create(&'a Record),
    Delete(&'a RemoteRecord),
}
