//! A MongoDB replica-set stand-in on real sockets: the wire protocol (OP_MSG, and
//! OP_QUERY/OP_REPLY for a legacy `isMaster`) and the replica-set commands a follower
//! uses, so the official `mongodb` driver can be tested where no `mongod` can be installed.
//!
//! Every member is a TCP listener on a free 127.0.0.1 port; all of them share one state:
//! the replica-set config (none until `replSetInitiate`), which member is primary, which
//! members are down (listener and connections closed, so connections are refused), and
//! counters. Elections are modelled, not simulated: after a step-down, a dead primary or an
//! initiation, the lowest-numbered live member of the config (not the one that stepped
//! down, when another can) becomes primary once the election delay has passed and a
//! majority of the config is alive.
//!
//! Commands: `hello`/`isMaster`/`ismaster` (no `setName` and `isWritablePrimary: false`
//! before initiation; no `topologyVersion`, so drivers poll rather than stream), `ping`,
//! `buildInfo`, `endSessions`, `insert` (counts its documents only), `replSetGetStatus`
//! (code 94 before initiation), `replSetGetConfig`, `replSetInitiate` (code 23 once a
//! config exists), `replSetReconfig` (on the primary, version + 1), `replSetStepDown` (on
//! the primary); anything else gets `{ok: 0, code: 59}`. Not modelled: authentication,
//! data, oplog, write concerns. Bytes that are not the wire protocol (bad lengths,
//! op codes, sections, required flag bits, checksums, BSON) close the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The largest message the stand-in accepts (and announces as `maxMessageSizeBytes`).
pub const MAX_MESSAGE_BYTES: usize = 48_000_000;
/// The smallest well-formed message: a header and a five-byte empty document.
const MIN_MESSAGE_BYTES: usize = 16 + 5;
const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;
const FLAG_CHECKSUM: u32 = 1;
const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag bits 0..=15 are "required": a receiver must reject unknown ones.
const REQUIRED_BITS_KNOWN: u32 = FLAG_CHECKSUM | FLAG_MORE_TO_COME;
/// How long an election takes unless a test changes it.
const DEFAULT_ELECTION_DELAY: Duration = Duration::from_millis(300);

/// What the stand-in knows of a member, as tests see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Listener closed: connections are refused.
    Down,
    /// Up, but not in the config (or no config yet).
    Uninitiated,
    /// Up and the writable primary.
    Primary,
    /// Up, in the config, not primary.
    Secondary,
}

/// A running stand-in; dropping it closes every listener and connection.
pub struct MongoStandin {
    shared: Arc<Shared>,
}

struct Shared {
    addrs: Vec<SocketAddr>,
    state: Mutex<State>,
    /// Accept tasks per member (`None` while the member is down); aborting one drops its
    /// `JoinSet`, which aborts that member's connections.
    acceptors: Mutex<Vec<Option<JoinHandle<()>>>>,
}

struct State {
    config: Option<Document>,
    primary: Option<usize>,
    down: Vec<bool>,
    /// When the pending election happens, and who should not win it.
    election_at: Option<Instant>,
    avoid: Option<usize>,
    election_delay: Duration,
    term: u32,
    initiations: u64,
    initiate_attempts: u64,
    reconfigs: u64,
    next_connection_id: i64,
    rejected: u64,
    last_rejection: Option<String>,
    commands: HashMap<String, u64>,
    /// Members that also claim to be primary, with the election term they claim.
    claims: HashMap<usize, u32>,
    /// Members that accept connections and read requests but never answer.
    muted: Vec<bool>,
}

// === impl MongoStandin ===

impl MongoStandin {
    /// Starts `n` members on free loopback ports, none of them initiated.
    ///
    /// # Panics
    /// When a listener cannot be bound.
    pub async fn start(n: usize) -> MongoStandin {
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n {
            let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a stand-in member");
            listeners.push(listener);
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("local addr")).collect();
        let shared = Arc::new(Shared {
            addrs,
            state: Mutex::new(State {
                config: None,
                primary: None,
                down: vec![false; n],
                election_at: None,
                avoid: None,
                election_delay: DEFAULT_ELECTION_DELAY,
                term: 0,
                initiations: 0,
                initiate_attempts: 0,
                reconfigs: 0,
                next_connection_id: 1,
                rejected: 0,
                last_rejection: None,
                commands: HashMap::new(),
                claims: HashMap::new(),
                muted: vec![false; n],
            }),
            acceptors: Mutex::new((0..n).map(|_| None).collect()),
        });
        for (i, listener) in listeners.into_iter().enumerate() {
            let task = tokio::spawn(accept_loop(shared.clone(), i, listener));
            shared.acceptors.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(task);
        }
        MongoStandin { shared }
    }

    /// Every member's address, in member order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.shared.addrs.clone()
    }

    /// Member `i`'s address as `host:port`, the spelling its config uses.
    pub fn host(&self, i: usize) -> String {
        self.shared.addrs[i].to_string()
    }

    /// How long elections take from now on (default 300 ms).
    pub fn set_election_delay(&self, delay: Duration) {
        self.shared.lock().election_delay = delay;
    }

    /// The primary steps down (as `replSetStepDown` does); another member is elected
    /// after the election delay. Returns the member that stepped down.
    pub fn step_down(&self) -> Option<usize> {
        let mut st = self.shared.lock();
        st.tick(&self.shared.addrs);
        let old = st.primary.take()?;
        st.schedule_election(Some(old));
        Some(old)
    }

    /// Member `i` goes down: its listener and connections are closed; a primary loses the
    /// role and an election is scheduled.
    pub async fn kill(&self, i: usize) {
        let task = self.shared.acceptors.lock().unwrap_or_else(|p| p.into_inner())[i].take();
        {
            let mut st = self.shared.lock();
            st.tick(&self.shared.addrs);
            st.down[i] = true;
            if st.primary == Some(i) {
                st.primary = None;
                st.schedule_election(Some(i));
            }
        }
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Member `i` comes back on the same port with the config it had (it is persisted).
    ///
    /// # Panics
    /// When the port cannot be bound again.
    pub fn revive(&self, i: usize) {
        let listener = bind(self.shared.addrs[i]).expect("rebind a revived stand-in member");
        {
            let mut st = self.shared.lock();
            st.down[i] = false;
            if st.config.is_some() && st.primary.is_none() && st.election_at.is_none() {
                st.schedule_election(None);
            }
        }
        let task = tokio::spawn(accept_loop(self.shared.clone(), i, listener));
        self.shared.acceptors.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(task);
    }

    /// Member `i` also answers `hello` as writable primary with the election term `term`
    /// (below [`MongoStandin::term`]: a stale primary that has not noticed the new
    /// election; equal to it: a claim nothing can tell apart). Only members of the config.
    pub fn claim_primary(&self, i: usize, term: u32) {
        self.shared.lock().claims.insert(i, term);
    }

    /// Withdraws every [`MongoStandin::claim_primary`].
    pub fn clear_claims(&self) {
        self.shared.lock().claims.clear();
    }

    /// The current election term (0 before the first election).
    pub fn term(&self) -> u32 {
        let mut st = self.shared.lock();
        st.tick(&self.shared.addrs);
        st.term
    }

    /// Member `i` hangs (`true`): it accepts connections and reads requests but answers
    /// none, as a stuck process does; `false` makes it answer again.
    pub fn mute(&self, i: usize, muted: bool) {
        self.shared.lock().muted[i] = muted;
    }

    /// Successful `replSetInitiate` calls.
    pub fn initiations(&self) -> u64 {
        self.shared.lock().initiations
    }

    /// Every `replSetInitiate` call, successful or not.
    pub fn initiate_attempts(&self) -> u64 {
        self.shared.lock().initiate_attempts
    }

    /// Successful `replSetReconfig` calls.
    pub fn reconfigs(&self) -> u64 {
        self.shared.lock().reconfigs
    }

    /// Connections closed because they sent something that is not the wire protocol.
    pub fn rejected(&self) -> u64 {
        self.shared.lock().rejected
    }

    /// Why the last rejected connection was closed.
    pub fn last_rejection(&self) -> Option<String> {
        self.shared.lock().last_rejection.clone()
    }

    /// How many times a command (by its lower-case name) was received.
    pub fn command_count(&self, name: &str) -> u64 {
        self.shared.lock().commands.get(&name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// The current config (`{_id, version, members: [{_id, host}]}`), if initiated.
    pub fn config(&self) -> Option<Document> {
        self.shared.lock().config.clone()
    }

    /// The primary's member index, once elected.
    pub fn primary(&self) -> Option<usize> {
        let mut st = self.shared.lock();
        st.tick(&self.shared.addrs);
        st.primary
    }

    /// What member `i` would answer to `hello`.
    pub fn state(&self, i: usize) -> MemberState {
        let mut st = self.shared.lock();
        st.tick(&self.shared.addrs);
        if st.down[i] {
            MemberState::Down
        } else if st.primary == Some(i) {
            MemberState::Primary
        } else if st.config_index(&self.shared.addrs[i].to_string()).is_some() {
            MemberState::Secondary
        } else {
            MemberState::Uninitiated
        }
    }
}

impl Drop for MongoStandin {
    fn drop(&mut self) {
        for task in self.shared.acceptors.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// === impl State ===

impl State {
    fn schedule_election(&mut self, avoid: Option<usize>) {
        self.avoid = avoid;
        self.election_at = Some(Instant::now() + self.election_delay);
    }

    /// The config's member hosts, in config order.
    fn config_hosts(&self) -> Vec<String> {
        let Some(config) = &self.config else { return Vec::new() };
        let Ok(members) = config.get_array("members") else { return Vec::new() };
        members
            .iter()
            .filter_map(|m| m.as_document().and_then(|d| d.get_str("host").ok()).map(str::to_string))
            .collect()
    }

    fn config_index(&self, host: &str) -> Option<usize> {
        self.config_hosts().iter().position(|h| h == host)
    }

    fn version(&self) -> i64 {
        self.config.as_ref().and_then(|c| as_i64(c.get("version"))).unwrap_or(0)
    }

    /// Runs a due election: the lowest-numbered live config member wins (the one that
    /// stepped down only when nobody else can), if a majority of the config is alive.
    fn tick(&mut self, addrs: &[SocketAddr]) {
        let Some(at) = self.election_at else { return };
        if Instant::now() < at || self.primary.is_some() {
            if self.primary.is_some() {
                self.election_at = None;
            }
            return;
        }
        let hosts = self.config_hosts();
        let alive: Vec<usize> = hosts
            .iter()
            .filter_map(|h| addrs.iter().position(|a| a.to_string() == *h))
            .filter(|&i| !self.down[i])
            .collect();
        if alive.len() * 2 <= hosts.len() {
            return; // No majority: stay without a primary, try again on the next look.
        }
        let winner = alive.iter().copied().find(|&i| Some(i) != self.avoid).or(alive.first().copied());
        self.primary = winner;
        self.term += 1;
        self.election_at = None;
        self.avoid = None;
    }
}

// === the wire ===

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

async fn accept_loop(shared: Arc<Shared>, member: usize, listener: tokio::net::TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(shared.clone(), member, stream));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Why a connection is closed.
#[derive(Debug)]
enum WireError {
    Io,
    Garbage(String),
}

impl From<std::io::Error> for WireError {
    fn from(_: std::io::Error) -> Self {
        WireError::Io
    }
}

async fn serve(shared: Arc<Shared>, member: usize, mut stream: TcpStream) {
    let connection_id = {
        let mut st = shared.lock();
        st.next_connection_id += 1;
        st.next_connection_id
    };
    loop {
        match exchange(&shared, member, connection_id, &mut stream).await {
            Ok(()) => {}
            Err(WireError::Io) => return,
            Err(WireError::Garbage(why)) => {
                let mut st = shared.lock();
                st.rejected += 1;
                st.last_rejection = Some(why);
                return;
            }
        }
    }
}

/// Reads one message and answers it.
async fn exchange(shared: &Shared, member: usize, connection_id: i64, stream: &mut TcpStream) -> Result<(), WireError> {
    let (header, body) = read_message(stream).await?;
    if shared.lock().muted[member] {
        // Hung: swallow everything until the peer gives up and closes.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        return Err(WireError::Io);
    }
    let request_id = i32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let op_code = i32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let (command, reply_legacy, more_to_come) = match op_code {
        OP_MSG => {
            let (command, flags) = parse_op_msg(&header, &body)?;
            (command, false, flags & FLAG_MORE_TO_COME != 0)
        }
        OP_QUERY => (parse_op_query(&body)?, true, false),
        other => return Err(WireError::Garbage(format!("op code {other}"))),
    };
    let reply = answer(shared, member, connection_id, &command);
    if more_to_come {
        return Ok(());
    }
    let out = if reply_legacy { encode_op_reply(request_id, &reply)? } else { encode_op_msg(request_id, &reply)? };
    stream.write_all(&out).await?;
    Ok(())
}

/// Reads a header and the rest of the message, refusing lengths outside the caps.
async fn read_message<R: AsyncRead + Unpin>(stream: &mut R) -> Result<([u8; 16], Vec<u8>), WireError> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).await?;
    let length = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let op_code = i32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let length = usize::try_from(length).map_err(|_| WireError::Garbage("negative length".into()))?;
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&length) {
        return Err(WireError::Garbage(format!("length {length}")));
    }
    if op_code != OP_MSG && op_code != OP_QUERY {
        return Err(WireError::Garbage(format!("op code {op_code}")));
    }
    let mut body = Vec::new();
    let want = (length - 16) as u64;
    stream.take(want).read_to_end(&mut body).await?;
    if body.len() as u64 != want {
        return Err(WireError::Io);
    }
    Ok((header, body))
}

/// CRC-32C (Castagnoli), the OP_MSG checksum, over the concatenation of `parts`.
fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            }
        }
    }
    !crc
}

/// Splits off a BSON document from the front of `bytes` (length-checked).
fn take_document(bytes: &[u8]) -> Result<(Document, usize), WireError> {
    let len = bytes
        .get(..4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| WireError::Garbage("short document".into()))?;
    let len = usize::try_from(len).map_err(|_| WireError::Garbage("negative document length".into()))?;
    if len < 5 || len > bytes.len() {
        return Err(WireError::Garbage(format!("document length {len}")));
    }
    let doc = Document::from_reader(&bytes[..len]).map_err(|e| WireError::Garbage(format!("bson: {e}")))?;
    Ok((doc, len))
}

fn take_cstring(bytes: &[u8]) -> Result<(&str, usize), WireError> {
    let end = bytes.iter().position(|&b| b == 0).ok_or_else(|| WireError::Garbage("unterminated cstring".into()))?;
    let s = std::str::from_utf8(&bytes[..end]).map_err(|_| WireError::Garbage("cstring not UTF-8".into()))?;
    Ok((s, end + 1))
}

/// OP_MSG: flag bits, one kind-0 body, any kind-1 document sequences (their documents
/// are folded into the body under the sequence identifier), an optional CRC-32C.
fn parse_op_msg(header: &[u8], body: &[u8]) -> Result<(Document, u32), WireError> {
    let flags = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| WireError::Garbage("no flags".into()))?;
    if flags & 0xffff & !REQUIRED_BITS_KNOWN != 0 {
        return Err(WireError::Garbage(format!("unknown required flag bits {flags:#x}")));
    }
    let mut end = body.len();
    if flags & FLAG_CHECKSUM != 0 {
        if end < 8 {
            return Err(WireError::Garbage("no room for the checksum".into()));
        }
        end -= 4;
        let want = u32::from_le_bytes([body[end], body[end + 1], body[end + 2], body[end + 3]]);
        if crc32c(&[header, &body[..end]]) != want {
            return Err(WireError::Garbage("checksum mismatch".into()));
        }
    }
    let mut at = 4;
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while at < end {
        let kind = body[at];
        at += 1;
        match kind {
            0 => {
                let (doc, len) = take_document(&body[at..end])?;
                if command.replace(doc).is_some() {
                    return Err(WireError::Garbage("two kind-0 sections".into()));
                }
                at += len;
            }
            1 => {
                let size = body
                    .get(at..at + 4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| WireError::Garbage("short sequence".into()))?;
                let size = usize::try_from(size).map_err(|_| WireError::Garbage("negative sequence size".into()))?;
                if size < 5 || at + size > end {
                    return Err(WireError::Garbage(format!("sequence size {size}")));
                }
                let section = &body[at + 4..at + size];
                let (ident, mut pos) = take_cstring(section)?;
                let ident = ident.to_string();
                let mut docs = Vec::new();
                while pos < section.len() {
                    let (doc, len) = take_document(&section[pos..])?;
                    docs.push(Bson::Document(doc));
                    pos += len;
                }
                sequences.push((ident, docs));
                at += size;
            }
            other => return Err(WireError::Garbage(format!("section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| WireError::Garbage("no kind-0 section".into()))?;
    for (ident, docs) in sequences {
        command.insert(ident, Bson::Array(docs));
    }
    Ok((command, flags))
}

/// OP_QUERY: only commands on `<db>.$cmd` (a legacy `isMaster` handshake).
fn parse_op_query(body: &[u8]) -> Result<Document, WireError> {
    let rest = body.get(4..).ok_or_else(|| WireError::Garbage("short OP_QUERY".into()))?;
    let (collection, n) = take_cstring(rest)?;
    if !collection.ends_with(".$cmd") {
        return Err(WireError::Garbage(format!("OP_QUERY on {collection}")));
    }
    let rest = rest.get(n + 8..).ok_or_else(|| WireError::Garbage("short OP_QUERY".into()))?;
    let (query, _) = take_document(rest)?;
    // Drivers may wrap the command as {$query: {...}, $readPreference: ...}.
    match query.get_document("$query") {
        Ok(inner) => Ok(inner.clone()),
        Err(_) => Ok(query),
    }
}

fn encode_doc(doc: &Document) -> Result<Vec<u8>, WireError> {
    doc.to_vec().map_err(|e| WireError::Garbage(format!("encode: {e}")))
}

fn header(len: usize, response_to: i32, op_code: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&rand_id().to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out
}

fn rand_id() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static NEXT: AtomicI32 = AtomicI32::new(1 << 20);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn encode_op_msg(response_to: i32, reply: &Document) -> Result<Vec<u8>, WireError> {
    let doc = encode_doc(reply)?;
    let len = 16 + 4 + 1 + doc.len();
    let mut out = header(len, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&doc);
    Ok(out)
}

fn encode_op_reply(response_to: i32, reply: &Document) -> Result<Vec<u8>, WireError> {
    let doc = encode_doc(reply)?;
    let len = 16 + 4 + 8 + 4 + 4 + doc.len();
    let mut out = header(len, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(&doc);
    Ok(out)
}

// === commands ===

fn as_i64(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

fn error(code: i32, code_name: &str, errmsg: impl Into<String>) -> Document {
    doc! { "ok": 0.0, "errmsg": errmsg.into(), "code": code, "codeName": code_name }
}

fn answer(shared: &Shared, member: usize, connection_id: i64, command: &Document) -> Document {
    let Some((name, _)) = command.iter().next() else {
        return error(59, "CommandNotFound", "no such command: ''");
    };
    let lower = name.to_ascii_lowercase();
    let mut st = shared.lock();
    *st.commands.entry(lower.clone()).or_insert(0) += 1;
    st.tick(&shared.addrs);
    let me = shared.addrs[member].to_string();
    match lower.as_str() {
        "hello" | "ismaster" => hello(&st, &shared.addrs, &me, member, connection_id),
        "ping" => doc! { "ok": 1.0 },
        "buildinfo" => {
            doc! { "version": "7.0.0-standin", "versionArray": [7, 0, 0, 0], "maxBsonObjectSize": 16_777_216, "ok": 1.0 }
        }
        "endsessions" => doc! { "ok": 1.0 },
        // Only to prove document sequences arrive: counts the documents, stores nothing.
        "insert" => {
            let n = command.get_array("documents").map(|d| d.len()).unwrap_or(0);
            doc! { "n": n as i32, "ok": 1.0 }
        }
        "replsetgetstatus" => get_status(&st, &shared.addrs, &me),
        "replsetgetconfig" => match &st.config {
            Some(config) if st.config_index(&me).is_some() => doc! { "config": config.clone(), "ok": 1.0 },
            _ => error(94, "NotYetInitialized", "no replset config has been received"),
        },
        "replsetinitiate" => initiate(&mut st, &me, command),
        "replsetreconfig" => reconfig(&mut st, member, command),
        "replsetstepdown" => {
            if st.primary != Some(member) {
                return error(10107, "NotWritablePrimary", "not primary so can't step down");
            }
            st.primary = None;
            st.schedule_election(Some(member));
            doc! { "ok": 1.0 }
        }
        _ => error(59, "CommandNotFound", format!("no such command: '{name}'")),
    }
}

fn hello(st: &State, addrs: &[SocketAddr], me: &str, member: usize, connection_id: i64) -> Document {
    let mut reply = doc! {
        "helloOk": true,
        "maxBsonObjectSize": 16_777_216,
        "maxMessageSizeBytes": MAX_MESSAGE_BYTES as i32,
        "maxWriteBatchSize": 100_000,
        "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id,
        "minWireVersion": 0,
        "maxWireVersion": 17,
        "readOnly": false,
    };
    match (&st.config, st.config_index(me)) {
        (Some(config), Some(_)) => {
            let claim = st.claims.get(&member).copied();
            let primary = st.primary == Some(member) || claim.is_some();
            let term = if st.primary == Some(member) { st.term } else { claim.unwrap_or(0) };
            reply.insert("isWritablePrimary", primary);
            reply.insert("ismaster", primary);
            reply.insert("secondary", !primary);
            reply.insert("setName", config.get_str("_id").unwrap_or_default());
            reply.insert("setVersion", st.version());
            reply.insert("hosts", st.config_hosts());
            reply.insert("me", me);
            if let Some(p) = st.primary {
                reply.insert("primary", addrs[p].to_string());
            }
            if primary {
                let mut id = [0u8; 12];
                id[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
                id[8..].copy_from_slice(&term.to_be_bytes());
                reply.insert("electionId", ObjectId::from_bytes(id));
            }
        }
        _ => {
            reply.insert("isWritablePrimary", false);
            reply.insert("ismaster", false);
            reply.insert("secondary", false);
            reply.insert("isreplicaset", true);
            reply.insert("info", "Does not have a valid replica set config");
        }
    }
    reply.insert("ok", 1.0);
    reply
}

fn get_status(st: &State, addrs: &[SocketAddr], me: &str) -> Document {
    let Some(config) = &st.config else {
        return error(94, "NotYetInitialized", "no replset config has been received");
    };
    if st.config_index(me).is_none() {
        return error(94, "NotYetInitialized", "no replset config has been received");
    }
    let mut members = Vec::new();
    for (id, host) in st.config_hosts().iter().enumerate() {
        let index = addrs.iter().position(|a| a.to_string() == *host);
        let up = index.is_some_and(|i| !st.down[i]);
        let (state, state_str) = match index {
            Some(i) if up && st.primary == Some(i) => (1, "PRIMARY"),
            Some(_) if up => (2, "SECONDARY"),
            _ => (8, "(not reachable/healthy)"),
        };
        members.push(doc! {
            "_id": id as i32, "name": host.clone(), "health": if up { 1.0 } else { 0.0 },
            "state": state, "stateStr": state_str, "self": host == me,
        });
    }
    let my_state = if st.primary.is_some_and(|p| addrs[p].to_string() == me) { 1 } else { 2 };
    doc! { "set": config.get_str("_id").unwrap_or_default(), "myState": my_state, "members": members, "ok": 1.0 }
}

/// Checks a config document: `_id` string, integer `version`, members with integer `_id`
/// and string `host`, no duplicates.
fn check_config(config: &Document) -> Result<(), String> {
    config.get_str("_id").map_err(|_| "config _id must be a string".to_string())?;
    as_i64(config.get("version")).ok_or("config version must be an integer")?;
    let members = config.get_array("members").map_err(|_| "config members must be an array".to_string())?;
    if members.is_empty() {
        return Err("config has no members".into());
    }
    let mut ids = Vec::new();
    let mut hosts = Vec::new();
    for m in members {
        let m = m.as_document().ok_or("a member is not a document")?;
        let id = as_i64(m.get("_id")).ok_or("a member _id is not an integer")?;
        let host = m.get_str("host").map_err(|_| "a member host is not a string".to_string())?;
        if ids.contains(&id) || hosts.contains(&host) {
            return Err(format!("duplicate member _id {id} or host {host}"));
        }
        ids.push(id);
        hosts.push(host);
    }
    Ok(())
}

fn initiate(st: &mut State, me: &str, command: &Document) -> Document {
    st.initiate_attempts += 1;
    if st.config.is_some() {
        return error(23, "AlreadyInitialized", "already initialized");
    }
    let Ok(config) = command.get_document("replSetInitiate").or_else(|_| command.get_document("replsetinitiate"))
    else {
        return error(93, "InvalidReplicaSetConfig", "replSetInitiate needs a config document");
    };
    if let Err(why) = check_config(config) {
        return error(93, "InvalidReplicaSetConfig", why);
    }
    let hosts_have_me = config
        .get_array("members")
        .map(|ms| ms.iter().any(|m| m.as_document().and_then(|d| d.get_str("host").ok()) == Some(me)))
        .unwrap_or(false);
    if !hosts_have_me {
        return error(
            74,
            "NodeNotFound",
            format!("no host described in the new configuration maps to this node ({me})"),
        );
    }
    st.config = Some(config.clone());
    st.initiations += 1;
    st.schedule_election(None);
    doc! { "ok": 1.0 }
}

fn reconfig(st: &mut State, member: usize, command: &Document) -> Document {
    if st.primary != Some(member) {
        return error(10107, "NotWritablePrimary", "replSetReconfig should only be run on a writable PRIMARY");
    }
    let Ok(config) = command.get_document("replSetReconfig").or_else(|_| command.get_document("replsetreconfig"))
    else {
        return error(93, "InvalidReplicaSetConfig", "replSetReconfig needs a config document");
    };
    if let Err(why) = check_config(config) {
        return error(93, "InvalidReplicaSetConfig", why);
    }
    let current = st.config.as_ref().and_then(|c| c.get_str("_id").ok()).unwrap_or_default();
    if config.get_str("_id").unwrap_or_default() != current {
        return error(93, "InvalidReplicaSetConfig", format!("new config's _id must stay {current}"));
    }
    let want = st.version() + 1;
    let got = as_i64(config.get("version")).unwrap_or(0);
    if got != want {
        return error(
            103,
            "NewReplicaSetConfigurationIncompatible",
            format!("new config version {got} must be {want}"),
        );
    }
    st.config = Some(config.clone());
    st.reconfigs += 1;
    doc! { "ok": 1.0 }
}

/// Builds an OP_MSG: `body` as the kind-0 section, then each (identifier, documents) as
/// a kind-1 document sequence, with a CRC-32C checksum when `checksum`.
pub fn op_msg(request_id: i32, body: &Document, sequences: &[(&str, Vec<Document>)], checksum: bool) -> Vec<u8> {
    let mut sections = vec![0u8];
    sections.extend(body.to_vec().unwrap_or_default());
    for (ident, docs) in sequences {
        let docs: Vec<u8> = docs.iter().flat_map(|d| d.to_vec().unwrap_or_default()).collect();
        sections.push(1);
        sections.extend(((4 + ident.len() + 1 + docs.len()) as i32).to_le_bytes());
        sections.extend(ident.as_bytes());
        sections.push(0);
        sections.extend(docs);
    }
    let flags: u32 = if checksum { FLAG_CHECKSUM } else { 0 };
    let len = 16 + 4 + sections.len() + if checksum { 4 } else { 0 };
    let mut out = Vec::with_capacity(len);
    out.extend((len as i32).to_le_bytes());
    out.extend(request_id.to_le_bytes());
    out.extend(0i32.to_le_bytes());
    out.extend(OP_MSG.to_le_bytes());
    out.extend(flags.to_le_bytes());
    out.extend(sections);
    if checksum {
        let crc = crc32c(&[&out]);
        out.extend(crc.to_le_bytes());
    }
    out
}

/// Sends one raw message to `addr` and returns the body of the OP_MSG answering it
/// (checking `responseTo`), within `limit`.
pub async fn raw_command(addr: SocketAddr, message: &[u8], limit: Duration) -> Result<Document, String> {
    let request_id = message.get(4..8).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or("short message")?;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        stream.write_all(message).await.map_err(|e| format!("write: {e}"))?;
        let (header, body) = read_message(&mut stream).await.map_err(|e| format!("reply: {e:?}"))?;
        let response_to = i32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if response_to != request_id {
            return Err(format!("responseTo {response_to}, sent {request_id}"));
        }
        parse_op_msg(&header, &body).map(|(doc, _)| doc).map_err(|e| format!("reply: {e:?}"))
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| format!("no answer within {limit:?}"))?
}

/// Writes raw bytes to `addr` and reports whether the stand-in closed the connection
/// within `limit` (without answering anything that parses as a reply).
pub async fn garbage_is_rejected(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    stream.write_all(bytes).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await {
        Ok(Ok(_)) if buf.is_empty() => Ok(()),
        Ok(Ok(_)) => Err(format!("answered {} bytes", buf.len())),
        Ok(Err(_)) => Ok(()), // reset: closed too
        Err(_) => Err(format!("connection still open after {limit:?}")),
    }
}
