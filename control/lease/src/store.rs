//! Durable Raft storage in one redb file, `<data_dir>/raft.redb`: the log, the vote, the
//! committed log id, the last purged log id and the latest snapshot. The lease state
//! machine itself lives in memory and is rebuilt at start from the snapshot plus the
//! committed log, which openraft re-applies.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::lease::{Data, LeaseClock, LeaseResponse, LeaseTable};
use super::{NodeId, PeerNode, TypeConfig};

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "raft.redb";

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

/// How long `open` waits for a previous handle on the same file (a node restarting in the
/// same process) to be released.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// Why the store could not be opened or read. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create raft data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// redb refused the file (corrupt, truncated, locked, wrong format) or a read failed.
    #[error(
        "raft store {path} is unusable: {source}; if the file is damaged, move it away and let \
         this node catch up from the other voters"
    )]
    Database {
        /// The file.
        path: PathBuf,
        /// The redb error (boxed: it is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// The file is damaged in a way redb detects only by panicking (e.g. truncated).
    #[error(
        "raft store {path} is damaged (truncated?): {detail}; move it away and let this node \
         catch up from the other voters"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
    /// A record inside the file does not decode.
    #[error(
        "raft store {path}: {what} does not decode ({detail}); the file is corrupt: move it \
         away and let this node catch up from the other voters"
    )]
    Decode {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The decoder's message.
        detail: String,
    },
}

/// The state machine's data: the lease table plus what openraft needs to know about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SmData {
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) last_membership: StoredMembership<NodeId, PeerNode>,
    pub(crate) table: LeaseTable,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, PeerNode>,
    data: Vec<u8>,
}

/// The shared redb handle and the file it came from (for error messages).
#[derive(Clone)]
struct Db {
    db: Arc<Handle>,
    path: Arc<PathBuf>,
}

/// Opens (or creates) `<data_dir>/raft.redb` and checks every record in it, so a damaged
/// file fails here, naming the file, rather than in the middle of an election.
pub(crate) fn open(data_dir: &Path, clock: Arc<Mutex<LeaseClock>>) -> Result<Opened, StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| StoreError::CreateDir { path: data_dir.to_path_buf(), source })?;
    let path = data_dir.join(STORE_FILE);
    let started = Instant::now();
    let database = loop {
        // redb asserts (panics) instead of returning an error when the file is shorter than
        // its header says, i.e. truncated: turn that into an error naming the file.
        let opened = std::panic::catch_unwind(|| Database::create(&path)).map_err(|panic| {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "redb panicked".to_string());
            StoreError::Damaged { path: path.clone(), detail }
        })?;
        match opened {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < REOPEN_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(StoreError::Database { path, source: Box::new(e.into()) }),
        }
    };
    let (closed_tx, closed_rx) = watch::channel(());
    let db = Db { db: Arc::new(Handle { db: database, _closed: closed_tx }), path: Arc::new(path) };
    db.init_tables()?;
    db.verify()?;

    let mut data = SmData::default();
    if let Some(snapshot) = db.snapshot()? {
        data = decode_sm(&db, &snapshot)?;
    }
    let (tx, rx) = watch::channel(data.table.clone());
    let (data_tx, data_rx) = watch::channel(Arc::clone(&data.table.data));
    let closed = StoreClosed(closed_rx);
    let sm = StateMachine {
        db: db.clone(),
        data: Arc::new(Mutex::new(data)),
        clock,
        published: Arc::new(tx),
        published_data: Arc::new(data_tx),
    };
    Ok(Opened { log: LogStore { db }, sm, table: rx, data: data_rx, closed })
}

/// What [`open`] returns.
pub(crate) struct Opened {
    pub(crate) log: LogStore,
    pub(crate) sm: StateMachine,
    pub(crate) table: watch::Receiver<LeaseTable>,
    /// The replicated data alone, sent only when it changed.
    pub(crate) data: watch::Receiver<Data>,
    pub(crate) closed: StoreClosed,
}

/// Tells when the redb file is closed and unlocked: the last handle dropped *and*
/// redb's own drop (which flushes) finished.
pub(crate) struct StoreClosed(watch::Receiver<()>);

impl StoreClosed {
    /// Waits up to `limit` for the file to be closed; false if it is still open.
    pub(crate) async fn wait(&self, limit: Duration) -> bool {
        let mut rx = self.0.clone();
        tokio::time::timeout(limit, async move { while rx.changed().await.is_ok() {} }).await.is_ok()
    }
}

/// The database and, dropped after it (fields drop in order), the "closed" signal.
struct Handle {
    db: Database,
    _closed: watch::Sender<()>,
}

impl std::ops::Deref for Handle {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

fn decode_sm(db: &Db, snapshot: &StoredSnapshot) -> Result<SmData, StoreError> {
    let table: LeaseTable = serde_json::from_slice(&snapshot.data).map_err(|e| db.decode_err("snapshot data", &e))?;
    Ok(SmData {
        last_applied: snapshot.meta.last_log_id,
        last_membership: snapshot.meta.last_membership.clone(),
        table,
    })
}

// === impl Db ===

impl Db {
    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database { path: (*self.path).clone(), source: Box::new(e.into()) }
    }

    fn decode_err(&self, what: &str, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Decode { path: (*self.path).clone(), what: what.to_string(), detail: e.to_string() }
    }

    fn init_tables(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        tx.open_table(LOG).map_err(|e| self.db_err(e))?;
        tx.open_table(META).map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Decodes every record once.
    fn verify(&self) -> Result<(), StoreError> {
        self.meta::<Vote<NodeId>>(KEY_VOTE)?;
        self.meta::<LogId<NodeId>>(KEY_COMMITTED)?;
        self.meta::<LogId<NodeId>>(KEY_PURGED)?;
        self.snapshot()?;
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let log = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
        let mut previous: Option<u64> = None;
        for row in log.iter().map_err(|e| self.db_err(e))? {
            let (key, value) = row.map_err(|e| self.db_err(e))?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(value.value())
                .map_err(|e| self.decode_err(&format!("log entry {}", key.value()), &e))?;
            if entry.log_id.index != key.value() || previous.is_some_and(|p| p + 1 != key.value()) {
                return Err(self.decode_err(
                    &format!("log entry {}", key.value()),
                    &format!("index {} out of sequence", entry.log_id.index),
                ));
            }
            previous = Some(key.value());
        }
        Ok(())
    }

    fn meta<T: for<'a> Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(META).map_err(|e| self.db_err(e))?;
        let Some(value) = table.get(key).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value()).map(Some).map_err(|e| self.decode_err(key, &e))
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.decode_err(key, &e))?;
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(META).map_err(|e| self.db_err(e))?;
            table.insert(key, bytes.as_slice()).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    fn snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        self.meta(KEY_SNAPSHOT)
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let log = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in log.range::<u64>(range).map_err(|e| self.db_err(e))? {
            let (key, value) = row.map_err(|e| self.db_err(e))?;
            let entry = serde_json::from_slice(value.value())
                .map_err(|e| self.decode_err(&format!("log entry {}", key.value()), &e))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let log = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
        let Some((key, value)) = log.last().map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| self.decode_err(&format!("log entry {}", key.value()), &e))
    }

    /// Deletes log entries in `range`, and records `purged` if given, in one transaction.
    fn delete(&self, range: (Bound<u64>, Bound<u64>), purged: Option<&LogId<NodeId>>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut log = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
            let keys: Vec<u64> = log
                .range::<u64>(range)
                .map_err(|e| self.db_err(e))?
                .map(|row| row.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(|e| self.db_err(e))?;
            for key in keys {
                log.remove(key).map_err(|e| self.db_err(e))?;
            }
            if let Some(purged) = purged {
                let bytes = serde_json::to_vec(purged).map_err(|e| self.decode_err(KEY_PURGED, &e))?;
                let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
                meta.insert(KEY_PURGED, bytes.as_slice()).map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }
}

fn io_read(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

fn io_write(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

/// Runs blocking redb work off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Decode {
            path: PathBuf::from(STORE_FILE),
            what: "storage task".to_string(),
            detail: join.to_string(),
        }),
    }
}

/// The Raft log, vote and committed id (openraft's `RaftLogStorage`).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

// === impl LogStore ===

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        blocking(move || db.entries(bounds)).await.map_err(io_read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged_log_id = db.meta::<LogId<NodeId>>(KEY_PURGED)?;
            let last = db.last_entry()?.map(|e| e.log_id);
            Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
        })
        .await
        .map_err(io_read)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(move || db.put_meta(KEY_VOTE, &vote)).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || db.meta(KEY_VOTE)).await.map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || db.put_meta(KEY_COMMITTED, &committed)).await.map_err(io_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let db = self.db.clone();
        // Stored as `Option<LogId>`; a missing key is `None` too.
        blocking(move || Ok(db.meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())).await.map_err(io_read)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            rows.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        let written = blocking(move || {
            let tx = db.db.begin_write().map_err(|e| db.db_err(e))?;
            {
                let mut log = tx.open_table(LOG).map_err(|e| db.db_err(e))?;
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice()).map_err(|e| db.db_err(e))?;
                }
            }
            // redb's default durability makes `commit` return only once the data is on disk.
            tx.commit().map_err(|e| db.db_err(e))
        })
        .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || db.delete((Bound::Included(log_id.index), Bound::Unbounded), None)).await.map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || db.delete((Bound::Unbounded, Bound::Included(log_id.index)), Some(&log_id)))
            .await
            .map_err(io_write)
    }
}

/// The lease state machine (openraft's `RaftStateMachine`) and its snapshots.
#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    pub(crate) data: Arc<Mutex<SmData>>,
    clock: Arc<Mutex<LeaseClock>>,
    published: Arc<watch::Sender<LeaseTable>>,
    published_data: Arc<watch::Sender<Data>>,
}

/// Locks a mutex, taking the data even if a panicking thread poisoned it (the data is
/// replaced whole or updated in one step, so it is never half-written).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl StateMachine ===

impl StateMachine {
    fn publish(&self) {
        let table = lock(&self.data).table.clone();
        let data = Arc::clone(&table.data);
        self.published.send_replace(table);
        self.published_data.send_if_modified(|old| {
            let changed = !Arc::ptr_eq(old, &data);
            if changed {
                *old = data;
            }
            changed
        });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (bytes, meta) = {
            let data = lock(&self.data);
            let bytes = serde_json::to_vec(&data.table).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let snapshot_id = match data.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, bytes.len()),
                None => format!("empty-{}", bytes.len()),
            };
            let meta = SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.last_membership.clone(),
                snapshot_id,
            };
            (bytes, meta)
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: bytes.clone() };
        let db = self.db.clone();
        blocking(move || db.put_meta(KEY_SNAPSHOT, &stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError<NodeId>> {
        let data = lock(&self.data);
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LeaseResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut touches = Vec::new();
        {
            let mut data = lock(&self.data);
            for entry in entries {
                // Every entry, blank and membership ones included, advances `last_applied`.
                data.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(LeaseResponse::None),
                    EntryPayload::Normal(cmd) => {
                        let (response, touch) = data.table.apply(entry.log_id.index, &cmd);
                        touches.extend(touch);
                        responses.push(response);
                    }
                    EntryPayload::Membership(m) => {
                        data.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        responses.push(LeaseResponse::None);
                    }
                }
            }
        }
        if !touches.is_empty() {
            let now = Instant::now();
            let mut clock = lock(&self.clock);
            for touch in &touches {
                clock.touch(touch, now);
            }
        }
        self.publish();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot.into_inner() };
        let new =
            decode_sm(&self.db, &stored).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let db = self.db.clone();
        let signature = meta.signature();
        blocking(move || db.put_meta(KEY_SNAPSHOT, &stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        *lock(&self.data) = new;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        let stored = blocking(move || db.snapshot()).await.map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
