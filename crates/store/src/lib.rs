//! Continuum's persistence.
//!
//! SQLite in WAL mode with `synchronous=FULL`: an acknowledged write is on disk.
//! All writes go through one group-committing writer thread ([`writer`]);
//! reads use a small pool of read-only connections on tokio's blocking pool.
//! PHI is sealed per tenant ([`crypto`]) and every PHI read and write lands in
//! the tenant's MAC-chained audit log ([`audit`]) in the same transaction as the
//! write itself, or before a read is returned.

mod appender;
mod attachments;
pub mod audit;
pub mod crypto;
pub mod db;
mod error;
pub mod migrate;
mod pool;
mod postgres;
mod schema;
mod writer;

mod chat;
mod contacts;
mod conversations;
mod events;
mod inbox;
mod ivr;
mod live;
mod messaging;
mod reminders;
mod revocations;
mod rooms;
mod routing;
mod tenants;
mod time_fmt;
mod voice;
mod webhooks;

pub use attachments::{Attachment, AttachmentFilter, NewAttachment, ReviewState};
pub use audit::{AuditEntry, AuditRecord, Outcome, Problem, SERVER_CHAIN, VerifyReport};
pub use chat::{ChatReceipt, ReceiptUpdate};
pub use contacts::{Contact, ContactInput, ContactList};
pub use conversations::{
    Conversation, ConversationFilter, ConversationList, NewConversation, TransitionParams,
};
pub use crypto::{SecretKey, TenantKeys};
pub use error::{Result, StoreError};
pub use events::{Context, Event, MediaSession};
pub use inbox::{InboxItem, InboxPage, InboxPatient, InboxTask, LastEvent, UNREAD_CAP};
pub use ivr::{BusinessCalendar, IvrFlow, MAX_FLOW_BYTES};
pub use messaging::{
    ClaimedMessage, ConsentChange, FailedAttempt, InboundOutcome, InboundRecord, MessageRef,
    MessageState, MessagingProvider, NewMessagingProvider, NewOutboundMessage, OutboundMessage,
    ProviderKind, ProviderWithSecret, SENDING_LEASE, SendOutcome,
};
pub use reminders::{
    Appointment, AppointmentInput, AppointmentPatch, AppointmentStatus, AppointmentUpsert,
    DispatchReport, QuietHours, Reminder, ReminderChannel, ReminderReplyKind, ReminderSettings,
    ReminderState, ReminderTemplate, TemplateInput, UpsertOutcome, WhatsappTemplate, plan,
};
pub use revocations::RevokedToken;
pub use rooms::{FallbackPolicy, Room, VisitSettings};
pub use routing::{
    Agent, AgentSpec, NewRoutingTask, OverflowAction, OverflowSpec, Queue, QueueSpec, RoutingTask,
    TaskState, valid_name,
};
pub use tenants::{ApiKeyInfo, Staff, Tenant};
pub use time_fmt::Timestamp;
pub use voice::{
    Call, CallDirection, CallState, DispatchAction, DispatchRule, MediaEncryption, NewCall,
    SipTransport, Trunk, TrunkSpec, TrunkStatus, TrunkWithSecret,
};
pub use webhooks::{DELIVERY_LEASE, Delivery, DueDelivery, Webhook, WebhookPayload};
pub use writer::WriteCtx;

use parking_lot::RwLock;
use pool::ReadPool;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore, oneshot};
use writer::{Completion, Job, Writer};

pub(crate) use continuum_core::clock::unix_micros as now_micros;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Read connections kept open, and reads run at once (more wait their
    /// turn without holding a thread).
    pub readers: usize,
    /// Events kept for live subscribers that fall behind before they must re-read.
    pub live_buffer: usize,
    /// PostgreSQL: connections kept open, and writes run at once.
    pub pg_connections: usize,
    /// This node's name in a cluster (whose claims are whose).
    pub node: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            readers: 8,
            live_buffer: 4096,
            pg_connections: 32,
            node: "local".into(),
        }
    }
}

/// Owner-only permissions (the data directory 0700, database files 0600).
fn restrict(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            StoreError::Database(format!(
                "cannot restrict {} to mode {mode:o}: {e}",
                path.display()
            ))
        })?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The database file inside a data directory.
/// Heap bytes SQLite holds (page caches of every connection, statements):
/// memory that grows with the database up to the caches' bound, which a leak
/// hunt must tell apart from our own allocations. SQLite allocates with libc's
/// malloc, so none of it is in the Rust global allocator's count.
pub fn sqlite_memory_bytes() -> i64 {
    // SAFETY: a read of SQLite's global memory counter; no arguments.
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("continuum.db")
}

#[derive(Clone)]
pub struct Store(Arc<Inner>);

/// Where the data lives.
/// Batches of appends written at once on PostgreSQL (`appender.rs`): one
/// commits while the next is written, and one blocked on another node's
/// row lock does not hold up every append of this node.
const APPEND_LANES: usize = 2;

enum Engine {
    /// One file, one group-committing writer thread, a pool of readers.
    Sqlite { writer: Writer, readers: ReadPool },
    /// A PostgreSQL database shared by every node.
    Postgres {
        pool: Box<postgres::PgPool>,
        /// Writes in flight at once (each holds a connection).
        write_slots: Arc<Semaphore>,
        audit_key: SecretKey,
        /// Where it is, for error messages and `/readyz` (no password).
        address: String,
        /// Timeline appends, written in batches (`appender.rs`).
        appender: appender::Appender,
    },
}

struct Inner {
    engine: Engine,
    /// One permit per read connection. Without it a burst of reads (800
    /// calls routing at once) parked hundreds of blocking threads, each
    /// opening its own connection with its own page cache: 650 MiB of RSS
    /// that the allocator kept after the burst.
    read_slots: Arc<Semaphore>,
    master: SecretKey,
    tenant_keys: RwLock<HashMap<String, Arc<TenantKeys>>>,
    live: live::Live,
    node: String,
    outbox_ready: Arc<Notify>,
    /// Woken when outbound messages are queued or re-queued.
    messages_ready: Arc<Notify>,
    /// Woken when reminders are scheduled (the scheduler sleeps until the next one is due).
    reminders_ready: Arc<Notify>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and runs migrations.
    pub fn open(data_dir: &Path, master: SecretKey, opts: StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Database(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = database_path(data_dir);
        restrict(data_dir, 0o700)?;
        let mut conn = rusqlite::Connection::open(&path)
            .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
        schema::configure(&conn, true)?;
        schema::migrate(&mut conn)?;
        let audit_key = master.derive("audit-chain");
        // Rows written before migration 4 carry queue, assignee and tags in
        // clear columns: seal them (a no-op once done).
        let conn = db::Conn::sqlite(conn);
        conversations::seal_clear_labels(&conn, &master, &audit_key)?;
        // Sealed or not, the database is nobody else's business; SQLite gives
        // the -wal and -shm files the database file's mode.
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                restrict(&file, 0o600)?;
            }
        }
        let writer = Writer::start(conn, audit_key, path.clone());
        let readers = ReadPool::new(path, opts.readers.max(1));
        Ok(Store::with_engine(
            Engine::Sqlite { writer, readers },
            master,
            opts,
        ))
    }

    /// Connects to a PostgreSQL database (`postgres://…`) and brings its
    /// schema up to date. Blocking: call it from a blocking thread (the
    /// server does, through [`Store::connect`]).
    pub fn open_postgres(url: &str, master: SecretKey, opts: StoreOptions) -> Result<Store> {
        let pool = postgres::PgPool::new(url, opts.pg_connections.max(1))?;
        let address = postgres::describe(url);
        {
            let conn = pool.get().map_err(|e| match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                    "{m} (store.url = {address}; is PostgreSQL running and reachable?)"
                )),
                e => e,
            })?;
            schema::migrate_postgres(&conn)?;
        }
        let audit_key = master.derive("audit-chain");
        let write_slots = Arc::new(Semaphore::new(opts.pg_connections.max(1)));
        Ok(Store::with_engine(
            Engine::Postgres {
                pool: Box::new(pool),
                write_slots,
                audit_key,
                address,
                appender: appender::Appender::new(APPEND_LANES),
            },
            master,
            opts,
        ))
    }

    /// Opens the store a URL names: `postgres://…` for PostgreSQL, anything
    /// else is a data directory for SQLite.
    pub async fn connect(location: &str, master: SecretKey, opts: StoreOptions) -> Result<Store> {
        let location = location.to_owned();
        tokio::task::spawn_blocking(move || {
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                Store::open_postgres(&location, master, opts)
            } else {
                Store::open(Path::new(&location), master, opts)
            }
        })
        .await
        .map_err(|e| StoreError::Database(format!("opening the store failed: {e}")))?
    }

    /// Where the data is, for logs and health reports (never a password).
    pub fn location(&self) -> String {
        match &self.0.engine {
            Engine::Sqlite { .. } => "sqlite (embedded)".into(),
            Engine::Postgres { address, .. } => address.clone(),
        }
    }

    /// Which backend this store runs on: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.0.engine {
            Engine::Sqlite { .. } => "sqlite",
            Engine::Postgres { .. } => "postgres",
        }
    }

    /// Whether the database answers now (for `/readyz`): a round trip on
    /// PostgreSQL, always true for the embedded SQLite file.
    pub async fn ping(&self) -> Result<()> {
        match self.0.engine {
            Engine::Sqlite { .. } => Ok(()),
            Engine::Postgres { .. } => {
                self.read(|c| {
                    c.query_row("SELECT 1", db::params![], |r| r.get::<_, i64>(0))?;
                    Ok(())
                })
                .await
            }
        }
    }

    fn with_engine(engine: Engine, master: SecretKey, opts: StoreOptions) -> Store {
        let read_slots = Arc::new(Semaphore::new(opts.readers.max(1)));
        let live = live::Live::new(opts.live_buffer.max(16));
        let node = opts.node.clone();
        Store(Arc::new(Inner {
            engine,
            read_slots,
            master,
            tenant_keys: RwLock::new(HashMap::new()),
            live,
            node,
            outbox_ready: Arc::new(Notify::new()),
            messages_ready: Arc::new(Notify::new()),
            reminders_ready: Arc::new(Notify::new()),
        }))
    }

    /// Lets queued writes commit, then stops the writer. Later writes fail.
    pub fn shutdown(&self) {
        match &self.0.engine {
            Engine::Sqlite { writer, .. } => writer.shutdown(),
            Engine::Postgres { write_slots, .. } => write_slots.close(),
        }
    }

    /// Writes waiting for the writer thread (SQLite) or for a connection.
    pub fn write_queue_depth(&self) -> usize {
        match &self.0.engine {
            Engine::Sqlite { writer, .. } => writer.queue_depth(),
            Engine::Postgres { appender, .. } => appender.queue_depth(),
        }
    }

    /// Woken whenever a commit adds webhook deliveries.
    pub fn outbox_ready(&self) -> Arc<Notify> {
        self.0.outbox_ready.clone()
    }

    pub fn master_key(&self) -> &SecretKey {
        &self.0.master
    }

    /// Runs `f` inside the writer's transaction and returns once it is committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// Like [`Store::write`], and runs `after` on the writer thread right after
    /// the commit, in commit order (used to publish events to live streams).
    pub(crate) async fn write_then<T, F, A>(&self, f: F, after: A) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
        A: FnOnce(&T) + Send + 'static,
    {
        let writer = match &self.0.engine {
            Engine::Sqlite { writer, .. } => writer,
            Engine::Postgres {
                write_slots,
                audit_key,
                ..
            } => {
                let slot = write_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| StoreError::ShuttingDown)?;
                let store = self.clone();
                let audit_key = audit_key.clone();
                return tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    let Engine::Postgres { pool, .. } = &store.0.engine else {
                        unreachable!()
                    };
                    let conn = pool.get()?;
                    let v = postgres::run_write(&conn, &audit_key, f)?;
                    after(&v);
                    Ok(v)
                })
                .await
                .map_err(|e| StoreError::Database(format!("write task failed: {e}")))?;
            }
        };
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |ctx| {
            let result = f(ctx);
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit| {
                let outcome = commit.and(result);
                if let Ok(v) = &outcome {
                    after(v);
                }
                let _ = tx.send(outcome);
            });
            (ok, done)
        });
        writer.submit(job)?;
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Commit(
                "the write was not committed (writer failure)".into(),
            ))
        })
    }

    /// Runs a read on a pooled read-only connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&crate::db::Conn) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        let slot = self
            .0
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Database("the store is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            store.read_blocking(f)
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }

    /// Synchronous read, for the CLI and verification.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&crate::db::Conn) -> Result<T>) -> Result<T> {
        match &self.0.engine {
            Engine::Sqlite { readers, .. } => f(&*readers.get()?),
            Engine::Postgres { pool, .. } => f(&*pool.get()?),
        }
    }

    /// Appends one audit record (used for denials and reads the server makes).
    pub async fn audit(&self, tenant_id: &str, entry: AuditEntry) -> Result<i64> {
        let tenant_id = tenant_id.to_owned();
        self.write(move |ctx| ctx.audit(&tenant_id, &entry)).await
    }

    pub async fn list_audit(
        &self,
        tenant_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |c| audit::list(c, &tenant_id, after, limit))
            .await
    }

    /// The tenant's unwrapped keys, read if not cached.
    pub(crate) async fn tenant_keys(&self, tenant_id: &str) -> Result<Arc<TenantKeys>> {
        if let Some(k) = self.0.tenant_keys.read().get(tenant_id) {
            return Ok(k.clone());
        }
        let store = self.clone();
        let tenant = tenant_id.to_owned();
        self.read(move |c| store.keys_for(c, &tenant)).await
    }

    /// The tenant's unwrapped keys (cached).
    pub(crate) fn keys_for(
        &self,
        conn: &crate::db::Conn,
        tenant_id: &str,
    ) -> Result<Arc<TenantKeys>> {
        if let Some(k) = self.0.tenant_keys.read().get(tenant_id) {
            return Ok(k.clone());
        }
        let keys = Arc::new(unwrap_tenant_keys(conn, &self.0.master, tenant_id)?);
        self.0
            .tenant_keys
            .write()
            .insert(tenant_id.to_owned(), keys.clone());
        Ok(keys)
    }
}

/// Opens a tenant's wrapped data key with the master key (no cache: see
/// [`Store::keys_for`]).
pub(crate) fn unwrap_tenant_keys(
    conn: &crate::db::Conn,
    master: &SecretKey,
    tenant_id: &str,
) -> Result<TenantKeys> {
    let wrapped: Vec<u8> = conn
        .query_row(
            "SELECT wrapped_key FROM tenants WHERE id = ?1",
            [tenant_id],
            |r| r.get(0),
        )
        .map_err(|e| match e {
            crate::db::DbError::NoRows => StoreError::NotFound("tenant"),
            e => e.into(),
        })?;
    let data = master
        .open(&wrapped, tenants::wrap_aad(tenant_id).as_bytes())
        .map_err(|_| {
            StoreError::Integrity(format!(
                "tenant {tenant_id}'s data key does not open with this master key (wrong CONTINUUM_SECURITY__MASTER_KEY or master.key file?)"
            ))
        })?;
    Ok(TenantKeys::from_data_key(SecretKey::from_bytes(&data)?))
}

impl Store {
    /// A PHI read: runs `f`, then records it in the audit chain (committed)
    /// before the caller may return anything. A missing object is recorded too.
    pub(crate) async fn read_audited<T, F>(
        &self,
        tenant_id: &str,
        entry: AuditEntry,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&crate::db::Conn) -> Result<T> + Send + 'static,
    {
        let result = self.read(f).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(StoreError::NotFound(_)) => Outcome::NotFound,
            Err(_) => return result,
        };
        self.audit(tenant_id, AuditEntry { outcome, ..entry })
            .await?;
        result
    }
}

impl Store {
    /// Verifies every audit chain, and every event against the audit record of
    /// its append: reports the first broken link of each chain.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.verify_blocking())
            .await
            .map_err(|e| StoreError::Database(format!("verification failed: {e}")))?
    }

    /// [`Store::verify`] on the calling thread (not from async code: the
    /// PostgreSQL client blocks).
    pub fn verify_blocking(&self) -> Result<VerifyReport> {
        let audit_key = self.0.master.derive("audit-chain");
        // One snapshot: appends committing meanwhile (another node's, or the
        // writer's) would otherwise show as events without their audit record.
        self.read_blocking(|c| c.snapshot(|c| {
            let mut report = VerifyReport::default();
            let mut by_tenant: Vec<(String, Vec<i64>)> = Vec::new();
            for (tenant, chain) in audit::chains(c)? {
                match by_tenant.last_mut() {
                    Some((t, chains)) if *t == tenant => chains.push(chain),
                    _ => by_tenant.push((tenant, vec![chain])),
                }
            }
            for (tenant, chains) in by_tenant {
                let keys = if tenant == SERVER_CHAIN { None } else { Some(self.keys_for(c, &tenant)?) };
                let mut appended = 0u64;
                let mut broken = false;
                for chain in chains {
                    let (n, problem) = audit::verify_chain(c, &audit_key, &tenant, chain, |rec| {
                        if rec.action == "event.append" && rec.outcome == "ok" && !rec.detail.contains("duplicate_of") {
                            appended += 1;
                            let keys = keys.as_ref()?;
                            return events::check_event_record(c, keys, &tenant, &rec.object, &rec.detail);
                        }
                        None
                    })?;
                    report.chains_checked += 1;
                    report.audit_records += n;
                    if let Some(p) = problem {
                        report.problems.push(p);
                        broken = true;
                    }
                }
                report.events_checked += appended;
                if broken {
                    continue;
                }
                // Every stored event must be covered by an append record, with no gaps.
                let gaps: i64 = c.query_row(
                    "SELECT CAST(COALESCE(SUM(CASE WHEN cnt != last_seq THEN 1 ELSE 0 END), 0) AS BIGINT) FROM (
                        SELECT c.id, c.last_seq, (SELECT COUNT(*) FROM events e WHERE e.conversation_id = c.id) AS cnt
                        FROM conversations c WHERE c.tenant_id = ?1) AS per_conversation",
                    [&tenant],
                    |r| r.get(0),
                )?;
                let total_events: i64 = c.query_row("SELECT COUNT(*) FROM events WHERE tenant_id = ?1", [&tenant], |r| r.get(0))?;
                if gaps > 0 {
                    report.problems.push(Problem {
                        tenant_id: tenant.clone(),
                        location: "events".into(),
                        reason: format!("{gaps} conversation(s) have a gap in their event sequence (events deleted)"),
                    });
                } else if total_events as u64 != appended {
                    report.problems.push(Problem {
                        tenant_id: tenant.clone(),
                        location: "events".into(),
                        reason: format!("{total_events} events stored but {appended} appends audited: events were inserted outside Continuum"),
                    });
                }
            }
            Ok(report)
        }))
    }
}
