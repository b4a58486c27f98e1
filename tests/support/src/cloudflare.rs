//! A fake Cloudflare v4 API on real sockets, for tests and benchmarks: zones, DNS records
//! with comments, bearer-token checks, injectable faults (429 with `Retry-After`, 5xx,
//! slow answers) and a request log. HTTP/1.1 comes from hyper. Extra listeners
//! ([`FakeCloudflare::tap`]) serve the same state and tag what arrives through them, so a
//! test can tell which agent sent a request.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::wait::unix_ns;

/// A fault the fake answers with instead of (or before) the normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: retry_after_secs`.
    RateLimited {
        /// Seconds in the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// An HTTP 5xx with Cloudflare's error envelope.
    ServerError(u16),
    /// Waits this long, then answers normally.
    Slow(Duration),
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query, e.g. `/client/v4/zones/…/dns_records`.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// When the request arrived.
    pub at: Instant,
    /// When the request arrived, Unix ns (the clock of `lease-history.jsonl`).
    pub at_ns: i128,
    /// The [`FakeCloudflare::tap`] it came through, `None` for the main listener.
    pub via: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    token: String,
    zones: Vec<Value>,
    records: BTreeMap<String, Value>,
    faults: VecDeque<Fault>,
    log: Vec<LoggedRequest>,
    next_id: u64,
    /// challtestsrv's management URL: TXT records are copied there (see
    /// [`FakeCloudflare::mirror_txt_to`]), with the names copied so far.
    txt_mirror: Option<(String, std::collections::BTreeSet<String>)>,
}

impl State {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", 0x00c0_ffee_0000_0000_u64 + self.next_id)
    }
}

/// The fake server; stops when dropped.
pub struct FakeCloudflare {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for FakeCloudflare {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeCloudflare {
    /// Starts the fake on 127.0.0.1 (port 0); requests must carry `Bearer <token>`.
    pub async fn start(token: &str) -> io::Result<FakeCloudflare> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State { token: token.to_string(), ..State::default() }));
        let task = tokio::spawn(accept(listener, state.clone(), None));
        Ok(FakeCloudflare { addr, state, tasks: Mutex::new(vec![task]) })
    }

    /// Opens one more listener on the same state whose requests are logged with
    /// `via = Some(name)`; returns the API base URL to give that client (ending with `/`).
    pub async fn tap(&self, name: &str) -> io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept(listener, self.state.clone(), Some(name.to_string())));
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        Ok(format!("http://{addr}/client/v4/"))
    }

    /// After every accepted write, copy the zone's TXT records to the DNS server of
    /// `pebble-challtestsrv` at `management_url` (its `set-txt`/`clear-txt` API) before
    /// answering, so an ACME CA resolving through it sees what was written here: the
    /// path a dns-01 record takes from Cloudflare to the CA's resolver, in one step.
    pub fn mirror_txt_to(&self, management_url: &str) {
        lock(&self.state).txt_mirror = Some((management_url.trim_end_matches('/').to_string(), Default::default()));
    }

    /// The API base URL to configure, ending with `/`.
    pub fn api_url(&self) -> String {
        format!("http://{}/client/v4/", self.addr)
    }

    /// Adds a zone and returns its id.
    pub fn add_zone(&self, name: &str) -> String {
        let mut s = lock(&self.state);
        let id = s.id();
        s.zones.push(zone_object(&id, name));
        id
    }

    /// Adds a record directly (as a person in the dashboard would) and returns its id.
    pub fn put_record(&self, zone_id: &str, name: &str, kind: &str, content: &str, comment: Option<&str>) -> String {
        self.insert_raw(zone_id, json!({"name": name, "type": kind, "content": content, "comment": comment}))
    }

    /// Adds a record from raw JSON fields (e.g. a CAA record with `data`) and returns its id.
    pub fn insert_raw(&self, zone_id: &str, fields: Value) -> String {
        let mut s = lock(&self.state);
        let id = s.id();
        let zone_name = zone_name(&s, zone_id);
        let rec = record_object(&id, zone_id, &zone_name, &fields);
        s.records.insert(id.clone(), rec);
        id
    }

    /// Changes a record's content behind the reconciler's back.
    pub fn set_content(&self, id: &str, content: &str) {
        if let Some(r) = lock(&self.state).records.get_mut(id) {
            r["content"] = json!(content);
            r["modified_on"] = json!(now_rfc3339());
        }
    }

    /// Removes a record behind the reconciler's back.
    pub fn remove_record(&self, id: &str) {
        lock(&self.state).records.remove(id);
    }

    /// Every record, in creation order.
    pub fn records(&self) -> Vec<Value> {
        lock(&self.state).records.values().cloned().collect()
    }

    /// The records of `name` and type `kind`.
    pub fn find(&self, name: &str, kind: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["name"].as_str() == Some(name) && r["type"].as_str() == Some(kind))
            .collect()
    }

    /// The next `n` requests get `fault`.
    pub fn inject(&self, fault: Fault, n: usize) {
        let mut s = lock(&self.state);
        s.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// The requests seen so far, in order of arrival (a slow answer is logged when sent).
    pub fn log(&self) -> Vec<LoggedRequest> {
        let mut log = lock(&self.state).log.clone();
        log.sort_by_key(|r| r.at);
        log
    }

    /// Forgets the requests seen so far.
    pub fn clear_log(&self) {
        lock(&self.state).log.clear();
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    body: Vec<u8>,
}

/// Accepts connections on `listener` for ever; requests are logged with `via`.
async fn accept(listener: TcpListener, state: Arc<Mutex<State>>, via: Option<String>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let (state, via) = (state.clone(), via.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| serve(req, state.clone(), via.clone()));
                    let _ended = http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(
    req: hyper::Request<Incoming>,
    state: Arc<Mutex<State>>,
    via: Option<String>,
) -> Result<hyper::Response<Full<Bytes>>, io::Error> {
    let (at, at_ns) = (Instant::now(), unix_ns());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let auth = req.headers().get("authorization").map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
    let body = req.into_body().collect().await.map_err(io::Error::other)?.to_bytes().to_vec();
    let req = Request { method, path, query, auth, body };
    // Answered in a task of its own: a client that gives up (a timeout) closes the
    // connection and hyper drops this future, but the request was received and is
    // logged with what it would have been answered, as a real server would have.
    let answered = tokio::spawn(async move {
        let fault = lock(&state).faults.pop_front();
        if let Some(Fault::Slow(d)) = &fault {
            tokio::time::sleep(*d).await;
        }
        let (status, retry_after, body) = match fault {
            Some(Fault::RateLimited { retry_after_secs }) => {
                (429, Some(retry_after_secs), failure(971, "Please wait and consider throttling your request speed"))
            }
            Some(Fault::ServerError(code)) => (code, None, failure(10_000 + u32::from(code), "Internal server error")),
            _ => {
                let (status, body) = handle(&state, &req);
                if status == 200 && req.method != "GET" {
                    mirror_txt(&state).await;
                }
                (status, None, body)
            }
        };
        lock(&state).log.push(LoggedRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            at,
            at_ns,
            via,
            status,
        });
        (status, retry_after, body)
    });
    let (status, retry_after, body) = answered.await.map_err(io::Error::other)?;
    let mut resp = hyper::Response::builder().status(status).header("content-type", "application/json");
    if let Some(secs) = retry_after {
        resp = resp.header("retry-after", secs.to_string());
    }
    resp.body(Full::new(Bytes::from(body.to_string()))).map_err(io::Error::other)
}

/// Copy every TXT record to the mirror, if one is set: each name seen so far is
/// cleared, then given its current values.
async fn mirror_txt(state: &Mutex<State>) {
    let (url, names) = {
        let mut s = lock(state);
        let mut now: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in s.records.values().filter(|r| r["type"] == "TXT") {
            let (Some(name), Some(content)) = (r["name"].as_str(), r["content"].as_str()) else { continue };
            now.entry(name.to_ascii_lowercase()).or_default().push(content.trim_matches('"').to_string());
        }
        let Some((url, seen)) = s.txt_mirror.as_mut() else { return };
        seen.extend(now.keys().cloned());
        let names: Vec<(String, Vec<String>)> =
            seen.iter().map(|n| (n.clone(), now.get(n).cloned().unwrap_or_default())).collect();
        (url.clone(), names)
    };
    let client = reqwest::Client::new();
    for (name, values) in names {
        let host = format!("{name}.");
        let _ = client.post(format!("{url}/clear-txt")).body(json!({ "host": host }).to_string()).send().await;
        for value in values {
            let body = json!({ "host": host, "value": value }).to_string();
            let _ = client.post(format!("{url}/set-txt")).body(body).send().await;
        }
    }
}

fn failure(code: u32, message: &str) -> Value {
    json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null})
}

fn success(result: Value, info: Option<Value>) -> Value {
    let mut v = json!({"success": true, "errors": [], "messages": [], "result": result});
    if let Some(i) = info {
        v["result_info"] = i;
    }
    v
}

fn handle(state: &Mutex<State>, req: &Request) -> (u16, Value) {
    let mut s = lock(state);
    if req.auth.as_deref() != Some(format!("Bearer {}", s.token).as_str()) {
        return (403, failure(9109, "Invalid access token"));
    }
    let q = parse_query(&req.query);
    let Some(rest) = req.path.strip_prefix("/client/v4/") else {
        return (404, failure(7000, "No route for that URI"));
    };
    let segs: Vec<&str> = rest.split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["zones"]) => {
            let zones: Vec<Value> = s
                .zones
                .iter()
                .filter(|z| q.get("name").is_none_or(|n| z["name"].as_str() == Some(n.as_str())))
                .cloned()
                .collect();
            page(zones, &q)
        }
        ("GET", ["zones", zid, "dns_records"]) => {
            if !s.zones.iter().any(|z| z["id"].as_str() == Some(zid)) {
                return (404, failure(7003, "Could not route to /zones/…, perhaps your object identifier is invalid?"));
            }
            let eq = |field: &str, want: Option<&String>, r: &Value| {
                want.is_none_or(|w| r[field].as_str().is_some_and(|v| v.eq_ignore_ascii_case(w)))
            };
            let recs: Vec<Value> = s
                .records
                .values()
                .filter(|r| r["zone_id"].as_str() == Some(zid))
                .filter(|r| eq("name", q.get("name").or(q.get("name.exact")), r))
                .filter(|r| q.get("type").is_none_or(|t| r["type"].as_str() == Some(t.as_str())))
                .filter(|r| eq("comment", q.get("comment.exact").or(q.get("comment")), r))
                .cloned()
                .collect();
            page(recs, &q)
        }
        ("POST", ["zones", zid, "dns_records"]) => {
            let Ok(fields) = serde_json::from_slice::<Value>(&req.body) else {
                return (400, failure(9207, "Request body is invalid."));
            };
            if let Some(e) = invalid(&fields) {
                return (400, e);
            }
            let dup = s.records.values().any(|r| {
                r["zone_id"].as_str() == Some(zid)
                    && r["name"] == fields["name"]
                    && r["type"] == fields["type"]
                    && r["content"] == fields["content"]
            });
            if dup {
                return (400, failure(81058, "An identical record already exists."));
            }
            let id = s.id();
            let zone_name = zone_name(&s, zid);
            let rec = record_object(&id, zid, &zone_name, &fields);
            s.records.insert(id, rec.clone());
            (200, success(rec, None))
        }
        (m @ ("PATCH" | "PUT"), ["zones", zid, "dns_records", id]) => {
            let Ok(fields) = serde_json::from_slice::<Value>(&req.body) else {
                return (400, failure(9207, "Request body is invalid."));
            };
            if m == "PUT" {
                if let Some(e) = invalid(&fields) {
                    return (400, e);
                }
            }
            let zone_name = zone_name(&s, zid);
            let Some(rec) = s.records.get_mut(*id).filter(|r| r["zone_id"].as_str() == Some(zid)) else {
                return (404, failure(81044, "Record does not exist."));
            };
            if m == "PUT" {
                let created = rec["created_on"].clone();
                *rec = record_object(id, zid, &zone_name, &fields);
                rec["created_on"] = created;
            } else if let (Some(obj), Some(f)) = (rec.as_object_mut(), fields.as_object()) {
                for (k, v) in f {
                    obj.insert(k.clone(), v.clone());
                }
            }
            rec["modified_on"] = json!(now_rfc3339());
            (200, success(rec.clone(), None))
        }
        ("DELETE", ["zones", zid, "dns_records", id]) => {
            match s.records.get(*id).filter(|r| r["zone_id"].as_str() == Some(zid)) {
                Some(_) => {
                    s.records.remove(*id);
                    (200, success(json!({"id": id}), None))
                }
                None => (404, failure(81044, "Record does not exist.")),
            }
        }
        _ => (404, failure(7000, "No route for that URI")),
    }
}

fn invalid(fields: &Value) -> Option<Value> {
    for k in ["type", "name", "content"] {
        if !fields[k].is_string() {
            return Some(failure(9000 + 5, &format!("DNS record {k} is required")));
        }
    }
    None
}

fn page(items: Vec<Value>, q: &BTreeMap<String, String>) -> (u16, Value) {
    let per_page: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(100).clamp(1, 5000);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let total = items.len();
    let chunk: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let info = json!({
        "page": page, "per_page": per_page, "count": chunk.len(), "total_count": total,
        "total_pages": total.div_ceil(per_page).max(1),
    });
    (200, success(Value::Array(chunk), Some(info)))
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn zone_name(s: &State, zone_id: &str) -> String {
    s.zones
        .iter()
        .find(|z| z["id"].as_str() == Some(zone_id))
        .and_then(|z| z["name"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn zone_object(id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "name": name,
        "status": "active",
        "paused": false,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "original_name_servers": null,
        "original_registrar": null,
        "original_dnshost": null,
        "modified_on": now_rfc3339(),
        "created_on": now_rfc3339(),
        "activated_on": now_rfc3339(),
        "vanity_name_servers": [],
        "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3, "phishing_detected": false},
        "owner": {"id": null, "type": "user", "email": null},
        "account": {"id": "01a7362d577a6c3019a474fd6f485823", "name": "Fake account"},
        "tenant": {"id": null, "name": null},
        "tenant_unit": {"id": null},
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
        "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0, "currency": "USD",
                 "frequency": "", "is_subscribed": false, "can_subscribe": false, "legacy_id": "free",
                 "legacy_discount": false, "externally_managed": false},
    })
}

fn record_object(id: &str, zone_id: &str, zone_name: &str, fields: &Value) -> Value {
    let now = now_rfc3339();
    let kind = fields["type"].as_str().unwrap_or_default();
    let mut rec = Map::new();
    rec.insert("id".into(), json!(id));
    rec.insert("zone_id".into(), json!(zone_id));
    rec.insert("zone_name".into(), json!(zone_name));
    rec.insert("proxiable".into(), json!(matches!(kind, "A" | "AAAA" | "CNAME")));
    rec.insert("proxied".into(), json!(false));
    rec.insert("ttl".into(), json!(1));
    rec.insert("settings".into(), json!({}));
    rec.insert("meta".into(), json!({}));
    rec.insert("comment".into(), Value::Null);
    rec.insert("tags".into(), json!([]));
    if let Some(f) = fields.as_object() {
        for (k, v) in f {
            rec.insert(k.clone(), v.clone());
        }
    }
    rec.insert("created_on".into(), json!(now));
    rec.insert("modified_on".into(), json!(now));
    Value::Object(rec)
}

/// Now as RFC 3339 with microseconds, like Cloudflare's timestamps.
fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}
