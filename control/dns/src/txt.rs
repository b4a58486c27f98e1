//! dns-01 challenge TXT records for the ACME orderer: `_acme-challenge.<domain>` written
//! and removed through the same client, request budget, retries and zone lookup as the
//! reconciler, under a comment the reconciler does not own.
//!
//! The ACME crate's `DnsChallenge` trait is implemented by whoever wires both crates (this
//! crate does not depend on `constellation-acme`): each method maps to the inherent one
//! here, with the error turned into a string (it never carries the token).

use std::sync::Arc;

use prometheus::Registry;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::api::{CreateRecord, DeleteRecord, RecordBody, RecordFilter};
use super::client::RetryPolicy;
use super::config::{normalize_name, DnsConfig};
use super::record::RemoteRecord;
use super::zone::Zone;
use super::DnsError;

/// TTL of challenge records, seconds: the lowest Cloudflare allows outside Enterprise
/// plans, so a stale value is not cached long after a retry.
pub const ACME_TXT_TTL: u32 = 60;

/// The label every dns-01 record name starts with (RFC 8555, section 8.4).
const CHALLENGE_LABEL: &str = "_acme-challenge";

/// Writes and removes dns-01 challenge TXT records in the configured zone. Cheap to share
/// behind an `Arc`; every method may be called concurrently.
pub struct AcmeTxt {
    zone: Arc<Zone>,
    /// The exact comment of our challenge records.
    comment: String,
}

impl AcmeTxt {
    /// Validates `cfg`, registers the DNS metrics in `registry` and builds a client of its
    /// own (none without a token: dry run). In a process that also runs a [`Reconciler`],
    /// use [`Reconciler::acme_txt`] instead: the metrics can be registered only once per
    /// registry, and both should share one request budget.
    ///
    /// [`Reconciler`]: crate::Reconciler
    /// [`Reconciler::acme_txt`]: crate::Reconciler::acme_txt
    pub fn new(cfg: &DnsConfig, registry: &Registry) -> Result<AcmeTxt, DnsError> {
        AcmeTxt::with_retry(cfg, registry, RetryPolicy::default())
    }

    /// [`AcmeTxt::new`] with an explicit retry policy.
    pub fn with_retry(cfg: &DnsConfig, registry: &Registry, retry: RetryPolicy) -> Result<AcmeTxt, DnsError> {
        cfg.validate()?;
        Ok(AcmeTxt::from_zone(Zone::new(cfg, registry, retry)?, cfg))
    }

    pub(crate) fn from_zone(zone: Arc<Zone>, cfg: &DnsConfig) -> AcmeTxt {
        AcmeTxt { zone, comment: cfg.challenge_marker() }
    }

    /// True when there is no token: writes are logged, nothing is sent.
    pub fn is_dry_run(&self) -> bool {
        self.zone.api().is_none()
    }

    /// The comment our challenge records carry:
    /// `managed-by=constellation cluster=<cluster_id> acme-challenge`.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// The record name of `domain`'s challenge, `_acme-challenge.<domain>` (a leading `*.`
    /// is dropped, as RFC 8555 does for wildcards); an error when it is outside the zone.
    pub fn record_name(&self, domain: &str) -> Result<String, DnsError> {
        let d = normalize_name(domain);
        let d = d.strip_prefix("*.").unwrap_or(&d);
        let zone = self.zone.name();
        let inside = d == zone || d.strip_suffix(zone).is_some_and(|head| head.ends_with('.') && head.len() > 1);
        if !inside {
            return Err(DnsError::OutsideZone { domain: domain.to_string(), zone: zone.to_string() });
        }
        Ok(format!("{CHALLENGE_LABEL}.{d}"))
    }

    /// Publishes `value` as a TXT record of `_acme-challenge.<domain>` and returns once
    /// Cloudflare has it. Other values at that name (a wildcard and its base name share it)
    /// are kept; a value already there is not written again. 429s, 5xx and timeouts are
    /// retried with the [`RetryPolicy`]; a domain outside the zone is refused before any
    /// request.
    pub async fn set_txt(&self, domain: &str, value: &str) -> Result<(), DnsError> {
        let name = self.record_name(domain)?;
        let Some(api) = self.zone.api() else {
            info!(name = %name, content = %value, "dry run (no DNS API token): would write dns-01 TXT record");
            return Ok(());
        };
        let zone_id = self.zone.id().await?;
        if let Some(r) = self.find(&zone_id, &name, value).await? {
            debug!(name = %name, id = %r.id, ours = r.owned_by(&self.comment), "dns-01 TXT record already present");
            return Ok(());
        }
        let body = RecordBody {
            kind: "TXT",
            name: name.clone(),
            content: value.to_string(),
            ttl: ACME_TXT_TTL,
            proxied: false,
            comment: self.comment.clone(),
        };
        match api.call("create_txt", &CreateRecord { zone_id: zone_id.clone(), body }).await {
            Ok(resp) => {
                let id = resp.result.0.get("id").and_then(Value::as_str).unwrap_or("?");
                info!(name = %name, id = %id, "dns-01 TXT record created");
                self.zone.metrics().writes.with_label_values(&["txt_create"]).inc();
                Ok(())
            }
            Err(e @ DnsError::Api { .. }) => self.created_after_all(&zone_id, &name, value, e).await,
            Err(e) => Err(e),
        }
    }

    /// A create refused with a 4xx: when an earlier attempt of the same call did land
    /// (its answer lost to a timeout or a 5xx), Cloudflare refuses the retry as "an
    /// identical record already exists" (81058). The record is then in place: success.
    pub(crate) async fn created_after_all(
        &self,
        zone_id: &str,
        name: &str,
        value: &str,
        err: DnsError,
    ) -> Result<(), DnsError> {
        match self.find(zone_id, name, value).await? {
            Some(r) => {
                info!(name = %name, id = %r.id, "dns-01 TXT record found after a refused create; in place");
                Ok(())
            }
            None => Err(err),
        }
    }

    /// Removes every TXT record of `_acme-challenge.<domain>` that carries our challenge
    /// comment; records without it (a person's, another cluster's) stay. Deletes are
    /// retried like writes; a record already gone is fine.
    pub async fn clear_txt(&self, domain: &str) -> Result<(), DnsError> {
        let name = self.record_name(domain)?;
        let Some(api) = self.zone.api() else {
            info!(name = %name, "dry run (no DNS API token): would delete dns-01 TXT records");
            return Ok(());
        };
        let zone_id = self.zone.id().await?;
        let ours: Vec<RemoteRecord> =
            self.txt_at(&zone_id, &name).await?.into_iter().filter(|r| r.owned_by(&self.comment)).collect();
        let (mut deleted, mut failed, mut first) = (0, 0, None);
        for r in &ours {
            match api.call("delete_txt", &DeleteRecord { zone_id: zone_id.clone(), id: r.id.clone() }).await {
                // 404: an earlier attempt whose answer was lost, or another orderer, got it.
                Ok(_) | Err(DnsError::Api { status: 404, .. }) => {
                    info!(name = %name, id = %r.id, "dns-01 TXT record deleted");
                    self.zone.metrics().writes.with_label_values(&["txt_delete"]).inc();
                    deleted += 1;
                }
                Err(e) => {
                    warn!(name = %name, id = %r.id, error = %e, "dns-01 TXT record not deleted");
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            None => Ok(()),
            Some(first) => Err(DnsError::Incomplete { applied: deleted, failed, first: Box::new(first) }),
        }
    }

    /// The TXT records at `name`, of any owner.
    async fn txt_at(&self, zone_id: &str, name: &str) -> Result<Vec<RemoteRecord>, DnsError> {
        // Listed by name, not by type: one record of a type the client does not model
        // cannot fail the list, and the type filter cannot be used alone.
        let all = self.zone.list(zone_id, RecordFilter::Name(name.to_string())).await?;
        Ok(all.into_iter().filter(|r| r.kind == "TXT").collect())
    }

    /// The TXT record at `name` whose value is `value`, of any owner: a value someone else
    /// already serves answers the challenge just as well.
    async fn find(&self, zone_id: &str, name: &str, value: &str) -> Result<Option<RemoteRecord>, DnsError> {
        Ok(self.txt_at(zone_id, name).await?.into_iter().find(|r| txt_value(&r.content) == value))
    }
}

/// The value of a TXT record's content: Cloudflare may return it wrapped in quotes.
fn txt_value(content: &str) -> &str {
    let c = content.trim();
    c.strip_prefix('"').and_then(|c| c.strip_suffix('"')).unwrap_or(c)
}

#[cfg(test)]
mod tests;
