//! Our own Cloudflare v4 endpoints, built on the `cloudflare` crate's `EndpointSpec`:
//! the crate's `DnsRecord` has no `comment`, its list filter cannot filter by type alone,
//! one record of an unmodelled type (CAA, …) fails its whole list, and `ListZones`
//! decodes full zone objects. These types decode leniently instead.

use cloudflare::framework::endpoint::spec::EndpointSpec;
use cloudflare::framework::endpoint::{serialize_query, Method, RequestBody};
use cloudflare::framework::response::{ApiResult, ApiSuccess};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::Record;

/// Page size of record lists (Cloudflare allows up to 5,000 for DNS records).
pub(crate) const RECORDS_PER_PAGE: u32 = 100;

/// The success envelope, decoded leniently: Cloudflare's error and message codes go past
/// `u16` (81058, …), which the crate's `ResponseInfo` cannot hold, so they are skipped.
#[derive(Debug, Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
pub(crate) struct Envelope<T> {
    pub result: T,
    #[serde(default)]
    pub result_info: Option<Value>,
}

/// The failure envelope, with codes wide enough for Cloudflare's.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Failure {
    #[serde(default)]
    pub errors: Vec<ErrorInfo>,
}

/// One error of a failure envelope.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorInfo {
    pub code: u32,
    #[serde(default)]
    pub message: String,
}

/// A zone, only the fields we use.
#[derive(Debug, Deserialize)]
pub(crate) struct ZoneRef {
    pub id: String,
    pub name: String,
}

/// A list of zones.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct ZoneList(pub Vec<ZoneRef>);
impl ApiResult for ZoneList {}

/// A list of records kept as raw JSON: decoding one by one means an odd record cannot
/// fail the list.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct RawList(pub Vec<Value>);
impl ApiResult for RawList {}

/// One raw JSON object (a created or updated record, a deletion receipt).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct RawObject(pub Value);
impl ApiResult for RawObject {}

/// `GET zones?name=`.
#[derive(Debug)]
pub(crate) struct ListZones {
    pub name: String,
}

#[derive(Serialize)]
struct ZoneQuery<'a> {
    name: &'a str,
    per_page: u32,
}

impl EndpointSpec for ListZones {
    type JsonResponse = ZoneList;
    type ResponseType = ApiSuccess<ZoneList>;

    fn method(&self) -> Method {
        Method::GET
    }
    fn path(&self) -> String {
        "zones".into()
    }
    fn query(&self) -> Option<String> {
        serialize_query(&ZoneQuery { name: &self.name, per_page: 50 })
    }
}

/// How a record list is filtered.
#[derive(Debug, Clone)]
pub(crate) enum RecordFilter {
    /// `name=` (exact name).
    Name(String),
    /// `comment.exact=` (our ownership marker; Cloudflare compares case-insensitively).
    Comment(String),
}

/// `GET zones/{zone}/dns_records?...&page=&per_page=`.
#[derive(Debug)]
pub(crate) struct ListRecords {
    pub zone_id: String,
    pub filter: RecordFilter,
    pub page: u32,
}

#[derive(Serialize)]
struct RecordQuery<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "comment.exact", skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    page: u32,
    per_page: u32,
}

impl EndpointSpec for ListRecords {
    type JsonResponse = RawList;
    type ResponseType = ApiSuccess<RawList>;

    fn method(&self) -> Method {
        Method::GET
    }
    fn path(&self) -> String {
        format!("zones/{}/dns_records", self.zone_id)
    }
    fn query(&self) -> Option<String> {
        let (name, comment) = match &self.filter {
            RecordFilter::Name(n) => (Some(n.as_str()), None),
            RecordFilter::Comment(c) => (None, Some(c.as_str())),
        };
        serialize_query(&RecordQuery { name, comment, page: self.page, per_page: RECORDS_PER_PAGE })
    }
}

/// The body of a create or update.
#[derive(Debug, Serialize)]
pub(crate) struct RecordBody {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub content: String,
    pub ttl: u32,
    pub proxied: bool,
    pub comment: String,
}

impl RecordBody {
    pub fn new(r: &Record, marker: &str) -> RecordBody {
        RecordBody {
            kind: r.kind.as_str(),
            name: r.name.clone(),
            content: r.content.to_string(),
            ttl: if r.proxied { 1 } else { r.ttl },
            proxied: r.proxied,
            comment: marker.to_string(),
        }
    }
}

/// `POST zones/{zone}/dns_records`.
#[derive(Debug)]
pub(crate) struct CreateRecord {
    pub zone_id: String,
    pub body: RecordBody,
}

impl EndpointSpec for CreateRecord {
    type JsonResponse = RawObject;
    type ResponseType = ApiSuccess<RawObject>;

    fn method(&self) -> Method {
        Method::POST
    }
    fn path(&self) -> String {
        format!("zones/{}/dns_records", self.zone_id)
    }
    fn body(&self) -> Option<RequestBody<'_>> {
        serde_json::to_string(&self.body).ok().map(RequestBody::Json)
    }
}

/// `PATCH zones/{zone}/dns_records/{id}`: changes the fields given, keeps tags and settings.
#[derive(Debug)]
pub(crate) struct PatchRecord {
    pub zone_id: String,
    pub id: String,
    pub body: RecordBody,
}

impl EndpointSpec for PatchRecord {
    type JsonResponse = RawObject;
    type ResponseType = ApiSuccess<RawObject>;

    fn method(&self) -> Method {
        Method::PATCH
    }
    fn path(&self) -> String {
        format!("zones/{}/dns_records/{}", self.zone_id, self.id)
    }
    fn body(&self) -> Option<RequestBody<'_>> {
        serde_json::to_string(&self.body).ok().map(RequestBody::Json)
    }
}

/// `DELETE zones/{zone}/dns_records/{id}`.
#[derive(Debug)]
pub(crate) struct DeleteRecord {
    pub zone_id: String,
    pub id: String,
}

impl EndpointSpec for DeleteRecord {
    type JsonResponse = RawObject;
    type ResponseType = ApiSuccess<RawObject>;

    fn method(&self) -> Method {
        Method::DELETE
    }
    fn path(&self) -> String {
        format!("zones/{}/dns_records/{}", self.zone_id, self.id)
    }
}
