//! The zone as every Cloudflare user of this crate reaches it: one client (token bucket,
//! retries, metrics), the zone id looked up once, and paged record lists. Shared by the
//! reconciler and the dns-01 TXT writer, so both spend the same request budget.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::Registry;
use serde_json::Value;
use tracing::warn;

use super::api::{ListRecords, ListZones, RecordFilter, RECORDS_PER_PAGE};
use super::bucket::TokenBucket;
use super::client::{Api, RetryPolicy};
use super::config::DnsConfig;
use super::metrics::DnsMetrics;
use super::record::RemoteRecord;
use super::DnsError;

/// Pages read at most per list (100 records each).
const MAX_PAGES: u32 = 100;

/// The client, the zone's name and its id once known.
pub(crate) struct Zone {
    name: String,
    api: Option<Api>,
    metrics: DnsMetrics,
    id: Mutex<Option<String>>,
}

impl Zone {
    /// Registers the metrics in `registry` and builds the client (none without a token:
    /// dry run). `cfg` must be validated already.
    pub(crate) fn new(cfg: &DnsConfig, registry: &Registry, retry: RetryPolicy) -> Result<Arc<Zone>, DnsError> {
        let metrics = DnsMetrics::register(registry).map_err(|e| DnsError::Client { detail: e.to_string() })?;
        let bucket = Arc::new(TokenBucket::new(cfg.rate_per_5min, cfg.rate_burst, Instant::now()));
        let api = match &cfg.token {
            Some(token) => Some(Api::new(
                &cfg.api_url,
                token,
                cfg.request_timeout(),
                bucket,
                retry,
                metrics.clone(),
                cfg.zone_name(),
            )?),
            None => None,
        };
        Ok(Arc::new(Zone { name: cfg.zone_name(), api, metrics, id: Mutex::new(cfg.zone_id.clone()) }))
    }

    /// The client; `None` in a dry run.
    pub(crate) fn api(&self) -> Option<&Api> {
        self.api.as_ref()
    }

    /// The metrics every call counts in.
    pub(crate) fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// The zone name, lower-case, without a trailing dot.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The zone id: configured, or looked up once by name (`GET zones?name=`).
    pub(crate) async fn id(&self) -> Result<String, DnsError> {
        if let Some(id) = lock(&self.id).clone() {
            return Ok(id);
        }
        let api = self.api.as_ref().ok_or(DnsError::DryRun)?;
        let zone = self.name.clone();
        let resp = api.call("list_zones", &ListZones { name: zone.clone() }).await?;
        let id = resp
            .result
            .0
            .into_iter()
            .find(|z| z.name.eq_ignore_ascii_case(&zone))
            .map(|z| z.id)
            .ok_or(DnsError::ZoneNotFound { zone })?;
        *lock(&self.id) = Some(id.clone());
        Ok(id)
    }

    /// Every record matching `filter`, page by page (retried like every read).
    pub(crate) async fn list(&self, zone_id: &str, filter: RecordFilter) -> Result<Vec<RemoteRecord>, DnsError> {
        let api = self.api.as_ref().ok_or(DnsError::DryRun)?;
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let ep = ListRecords { zone_id: zone_id.to_string(), filter: filter.clone(), page };
            let resp = api.call("list_records", &ep).await?;
            let n = resp.result.0.len();
            for raw in &resp.result.0 {
                match RemoteRecord::from_json(raw) {
                    Some(r) => out.push(r),
                    None => warn!(record = %raw, "DNS record without id, name or type; ignored"),
                }
            }
            let total_pages =
                resp.result_info.as_ref().and_then(|i| i.get("total_pages")).and_then(Value::as_u64).unwrap_or(1);
            if u64::from(page) >= total_pages || n < RECORDS_PER_PAGE as usize {
                break;
            }
        }
        Ok(out)
    }
}

/// Locks `m`, recovering from a poisoned lock (the data is plain values).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
