//! Group commit for timeline appends on PostgreSQL.
//!
//! One append written alone is nine statements (lock the conversation,
//! insert the event, move `last_seq`, take, extend and move the audit chain
//! head, look for webhooks, begin, commit), each a round trip and a turn of
//! the server's executor: at 64 writers the server and PostgreSQL spent
//! ~750 µs of CPU per append and topped out near 2,200 appends/s on two
//! cores. Here the appends that arrive while a batch is being written wait
//! together, and the next batch writes them all with the same nine
//! statements over arrays (`unnest`): one `FOR UPDATE` over every
//! conversation of the batch (in id order, so two batches, or a batch and a
//! single write, never lock in opposite orders), one multi-row insert of
//! events, audit records and outbox rows, one update of the conversations'
//! `last_seq`, one commit (one WAL flush).
//!
//! What stays exactly as for a single append: `seq` gap-free per
//! conversation (the row lock, then numbers given in arrival order),
//! idempotency keys answered once (looked up after the lock), the audit
//! entry and digest of each event (`events::seal_event`), webhooks queued in
//! the same transaction. Appends that need more than a row go alone after
//! the batch through the single-append path: an inbound event on a closed
//! conversation (it reopens it first), and a second append with an
//! idempotency key the batch already carries (it must see the first one
//! committed). If a batch fails for any reason but a lost connection, each
//! of its appends is retried alone, so one bad append never fails another.
//!
//! A few lanes (blocking threads, each with its own connection) write
//! batches side by side, so one batch's commit overlaps the next one's
//! statements. Alone at one writer, an append is a batch of one.

use crate::error::{Result, StoreError};
use crate::events::{
    Appended, Event, append_in_tx, duplicate_audit, event_from_row, publish, same_request,
    seal_event, write_side_rows,
};
use crate::webhooks::{OutboxRows, deliveries_for};
use crate::{Store, TenantKeys, now_micros};
use continuum_core::{ConversationState, NewEvent};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::oneshot;

/// Appends one batch writes at most (more wait for the next batch).
const MAX_BATCH: usize = 256;

/// Appends waiting that start another lane while one is busy. A batch has
/// a fixed cost (two round trips, a dozen statements, a WAL flush) whatever
/// its size: lanes started for a few appends each cut the batches small and
/// cost more CPU per append than the overlap gains. Measured with `continuum
/// bench events` at 64 writers on 2 cores: 2 lanes from 32 waiting gave
/// 11,300 appends/s; from 16, 11,000; one lane, 10,000 (latency-bound on
/// the commit); 3 lanes, 10,700.
const ANOTHER_LANE_AT: usize = 32;

/// One append waiting for its batch.
struct AppendRequest {
    tenant_id: String,
    conv_id: String,
    ev: NewEvent,
    audit_actor: String,
    reply: oneshot::Sender<Result<Appended>>,
}

/// The appends waiting, and the lanes writing them.
pub(crate) struct Appender {
    waiting: Mutex<Vec<AppendRequest>>,
    lanes: AtomicUsize,
    max_lanes: usize,
}

impl Appender {
    pub fn new(max_lanes: usize) -> Appender {
        Appender {
            waiting: Mutex::new(Vec::new()),
            lanes: AtomicUsize::new(0),
            max_lanes: max_lanes.max(1),
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Whether `waiting` appends call for another lane: the first lane
    /// always; another only once enough wait to make a batch worth its
    /// fixed cost (statements and round trips that cost the same for one
    /// append or two hundred).
    fn wants_lane(&self, waiting: usize) -> bool {
        self.lanes.load(Ordering::Acquire) == 0 || waiting >= ANOTHER_LANE_AT
    }

    /// Takes a free lane, if any.
    fn claim_lane(&self) -> bool {
        self.lanes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_lanes).then_some(n + 1)
            })
            .is_ok()
    }
}

/// What became of one append of a batch.
enum Slot {
    Created(Event),
    Duplicate(Event),
    Refused(StoreError),
    /// Written alone after the batch (see the module doc).
    Alone,
}

impl Store {
    /// Queues an append for the next batch and waits for its commit.
    pub(crate) async fn append_batched(
        &self,
        tenant_id: String,
        conv_id: String,
        ev: NewEvent,
        audit_actor: String,
    ) -> Result<Appended> {
        let crate::Engine::Postgres {
            appender,
            write_slots,
            ..
        } = &self.0.engine
        else {
            unreachable!("the batch appender is PostgreSQL's")
        };
        if write_slots.is_closed() {
            return Err(StoreError::ShuttingDown);
        }
        let (tx, rx) = oneshot::channel();
        let waiting = {
            let mut w = appender.waiting.lock();
            w.push(AppendRequest {
                tenant_id,
                conv_id,
                ev,
                audit_actor,
                reply: tx,
            });
            w.len()
        };
        if appender.wants_lane(waiting) && appender.claim_lane() {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.run_lane());
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Commit(
                "the append was not committed (its batch failed)".into(),
            ))
        })
    }

    /// Writes batches until nothing waits, then gives the lane back.
    fn run_lane(&self) {
        let crate::Engine::Postgres { appender, .. } = &self.0.engine else {
            return;
        };
        loop {
            let batch: Vec<AppendRequest> = {
                let mut waiting = appender.waiting.lock();
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                appender.lanes.fetch_sub(1, Ordering::AcqRel);
                // An append queued between the drain and the release saw
                // every lane busy: take a lane back for it.
                if appender.waiting.lock().is_empty() || !appender.claim_lane() {
                    return;
                }
                continue;
            }
            // A panic must not take the lane with it (the lanes would run
            // out and every later append would wait forever); its appends'
            // callers see their reply dropped: not committed.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_batch(batch)))
                .is_err()
            {
                tracing::error!("a batch of appends panicked; its appends were answered as failed");
            }
        }
    }

    fn write_batch(&self, batch: Vec<AppendRequest>) {
        let crate::Engine::Postgres {
            pool, audit_key, ..
        } = &self.0.engine
        else {
            return;
        };
        let conn = match pool.get() {
            Ok(c) => c,
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        // Tenant keys are cached; a tenant's first append reads them here,
        // before the transaction.
        let mut keys: HashMap<String, Result<Arc<TenantKeys>>> = HashMap::new();
        for r in &batch {
            if !keys.contains_key(&r.tenant_id) {
                let k = self.keys_for(&conn, &r.tenant_id);
                keys.insert(r.tenant_id.clone(), k);
            }
        }
        let started = std::time::Instant::now();
        let written =
            crate::postgres::in_write(&conn, || write_rows(&conn, audit_key, &keys, &batch));
        metrics::histogram!("continuum_store_commit_batch_size").record(batch.len() as f64);
        metrics::histogram!("continuum_store_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        let (slots, webhooks) = match written {
            Ok(w) => w,
            Err(e)
                if matches!(e, StoreError::Unavailable(_))
                    && !conn.as_pg().is_some_and(|c| c.borrow().is_usable()) =>
            {
                for r in batch {
                    let _ = r.reply.send(Err(e.clone()));
                }
                return;
            }
            Err(e) => {
                // A deadlock with another node's write, or a row one append
                // could not take: each on its own, so only that one fails.
                tracing::debug!(error = %e, n = batch.len(), "a batch of appends failed; writing them one by one");
                (batch.iter().map(|_| Slot::Alone).collect(), 0)
            }
        };
        // Committed: live streams and webhooks first, then the callers.
        let created: Vec<Event> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Created(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        publish(&self.0.live, &created);
        if webhooks > 0 {
            self.0.outbox_ready.notify_one();
        }
        // What the batch decided is answered first; the appends that go
        // alone (each a transaction that may wait on locks) come after, in
        // batch order. A conversation with one of them has all its later
        // appends alone too, so its order holds.
        let mut alone = Vec::new();
        for (r, slot) in batch.into_iter().zip(slots) {
            let outcome = match slot {
                Slot::Created(event) => Ok(Appended {
                    event,
                    created: true,
                    also_written: vec![],
                }),
                Slot::Duplicate(event) => Ok(Appended {
                    event,
                    created: false,
                    also_written: vec![],
                }),
                Slot::Refused(e) => Err(e),
                Slot::Alone => {
                    alone.push(r);
                    continue;
                }
            };
            let _ = r.reply.send(outcome);
        }
        for r in alone {
            let outcome = self.append_alone(&conn, audit_key, &r);
            let _ = r.reply.send(outcome);
        }
    }

    /// One append in a transaction of its own, as without the batch.
    fn append_alone(
        &self,
        conn: &crate::db::Conn,
        audit_key: &crate::crypto::SecretKey,
        r: &AppendRequest,
    ) -> Result<Appended> {
        let a = crate::postgres::run_write(conn, audit_key, |ctx| {
            let keys = self.keys_for(ctx.conn, &r.tenant_id)?;
            append_in_tx(ctx, &keys, &r.tenant_id, &r.conv_id, &r.ev, &r.audit_actor)
        })?;
        if a.created {
            publish(&self.0.live, &a.also_written);
            publish(&self.0.live, std::slice::from_ref(&a.event));
            self.0.outbox_ready.notify_one();
        }
        Ok(a)
    }
}

/// A conversation of the batch, as locked.
struct Head {
    tenant_id: String,
    state: ConversationState,
    last_seq: i64,
    at: i64,
    touched: bool,
    /// An earlier append of the batch went alone: later ones follow it.
    alone: bool,
}

/// The columns of the batch's new events, for one insert.
#[derive(Default)]
struct EventColumns<'a> {
    conversation_id: Vec<&'a str>,
    seq: Vec<i64>,
    tenant_id: Vec<&'a str>,
    at: Vec<i64>,
    channel: Vec<&'static str>,
    kind: Vec<&'static str>,
    actor_type: Vec<&'static str>,
    actor_id: Vec<Option<&'a str>>,
    idempotency_key: Vec<Option<&'a str>>,
    payload: Vec<Vec<u8>>,
}

type Params<'a> = Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>;

/// The rows of each statement of a pipeline, or the first error.
fn all_rows(
    answers: Vec<crate::db::Result<Vec<tokio_postgres::Row>>>,
) -> Result<Vec<Vec<tokio_postgres::Row>>> {
    answers
        .into_iter()
        .map(|a| a.map_err(StoreError::from))
        .collect()
}

/// The whole batch in two round trips. First: BEGIN, lock the
/// conversations, find the events the idempotency keys already stored, the
/// tenants' webhooks and a free audit chain head per tenant. Then, with
/// every row built here: insert the events, move the conversations, extend
/// the chains, queue the deliveries, COMMIT. Returns what became of each
/// append and how many deliveries were queued.
fn write_rows(
    conn: &crate::db::Conn,
    audit_key: &crate::crypto::SecretKey,
    keys: &HashMap<String, Result<Arc<TenantKeys>>>,
    batch: &[AppendRequest],
) -> Result<(Vec<Slot>, usize)> {
    // (conversation, tenant) pairs: a conversation is locked and read only
    // for the tenant it belongs to, as `load_head` does for one append.
    let mut pairs: Vec<(&str, &str)> = batch
        .iter()
        .map(|r| (r.conv_id.as_str(), r.tenant_id.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (ids, owners): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let mut tenants: Vec<&str> = batch
        .iter()
        .filter(|r| matches!(keys.get(&r.tenant_id), Some(Ok(_))))
        .map(|r| r.tenant_id.as_str())
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    let (mut key_convs, mut key_values, mut key_tenants) = (Vec::new(), Vec::new(), Vec::new());
    for r in batch {
        if let Some(key) = r.ev.idempotency_key.as_deref() {
            key_convs.push(r.conv_id.as_str());
            key_values.push(key);
            key_tenants.push(r.tenant_id.as_str());
        }
    }

    // Round trip 1.
    let stored_sql = crate::events::stored_under_keys_sql();
    let no_params: Params<'_> = vec![];
    let mut first: Vec<(&str, Params<'_>)> = vec![
        ("BEGIN", no_params),
        (crate::conversations::LOCK_MANY_SQL, vec![&ids, &owners]),
        (crate::webhooks::LIVE_HOOKS_MANY_SQL, vec![&tenants]),
    ];
    if !key_convs.is_empty() {
        first.push((&stored_sql, vec![&key_convs, &key_values, &key_tenants]));
    }
    for t in &tenants {
        first.push((crate::audit::FREE_HEAD_SQL, vec![t]));
    }
    let items: Vec<(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])> =
        first.iter().map(|(q, p)| (*q, p.as_slice())).collect();
    let mut answers = all_rows(conn.pg_pipeline(&items)?)?.into_iter().skip(1);
    let locked = answers.next().unwrap_or_default();
    let hook_rows = answers.next().unwrap_or_default();
    let stored_rows = if key_convs.is_empty() {
        Vec::new()
    } else {
        answers.next().unwrap_or_default()
    };
    let free_heads: Vec<Vec<tokio_postgres::Row>> = answers.collect();

    let mut heads: HashMap<String, Head> = HashMap::with_capacity(ids.len());
    for row in &locked {
        let row = crate::db::Row::Pg(row);
        let state: String = row.get(2)?;
        heads.insert(
            row.get(0)?,
            Head {
                tenant_id: row.get(1)?,
                state: state.parse().map_err(StoreError::Integrity)?,
                last_seq: row.get(3)?,
                at: 0,
                touched: false,
                alone: false,
            },
        );
    }
    let mut hooks: HashMap<String, Vec<crate::webhooks::LiveHook>> = HashMap::new();
    for row in &hook_rows {
        let row = crate::db::Row::Pg(row);
        hooks
            .entry(row.get(0)?)
            .or_default()
            .push((row.get(1)?, row.get(2)?, row.get(3)?));
    }
    // Only keys of a conversation of the asking tenant count (another
    // tenant's events are not even opened).
    let mut stored: HashMap<(String, String), Event> = HashMap::new();
    for row in &stored_rows {
        let row = crate::db::Row::Pg(row);
        let conv: String = row.get(0)?;
        let Some(h) = heads.get(&conv) else { continue };
        let Some(Ok(k)) = keys.get(&h.tenant_id) else {
            continue;
        };
        let event = event_from_row(k, &h.tenant_id, &row)?;
        if let Some(key) = event.idempotency_key.clone() {
            stored.insert((conv, key), event);
        }
    }

    // Every row, built here.
    let mut slots = Vec::with_capacity(batch.len());
    let mut cols = EventColumns::default();
    let mut audits: HashMap<&str, Vec<crate::audit::AuditEntry>> = HashMap::new();
    let mut keys_seen: HashSet<(&str, &str)> = HashSet::new();
    for r in batch {
        let slot = (|| {
            let k = match keys.get(&r.tenant_id) {
                Some(Ok(k)) => k,
                Some(Err(e)) => return Ok(Slot::Refused(e.clone())),
                None => return Ok(Slot::Refused(StoreError::NotFound("conversation"))),
            };
            let Some(head) = heads
                .get_mut(&r.conv_id)
                .filter(|h| h.tenant_id == r.tenant_id)
            else {
                return Ok(Slot::Refused(StoreError::NotFound("conversation")));
            };
            if head.alone {
                return Ok(Slot::Alone);
            }
            if let Some(key) = &r.ev.idempotency_key {
                if let Some(existing) = stored.get(&(r.conv_id.clone(), key.clone())) {
                    if !same_request(existing, &r.ev) {
                        return Ok(Slot::Refused(StoreError::IdempotencyMismatch(
                            key.chars().take(64).collect(),
                        )));
                    }
                    audits
                        .entry(&r.tenant_id)
                        .or_default()
                        .push(duplicate_audit(&r.audit_actor, &r.conv_id, existing.seq));
                    return Ok(Slot::Duplicate(existing.clone()));
                }
                if !keys_seen.insert((r.conv_id.as_str(), key.as_str())) {
                    head.alone = true;
                    return Ok(Slot::Alone);
                }
            }
            if head.state == ConversationState::Closed && r.ev.is_inbound() {
                head.alone = true;
                return Ok(Slot::Alone);
            }
            let seq = head.last_seq + 1;
            let at = now_micros();
            let row = seal_event(k, &r.tenant_id, &r.conv_id, seq, at, &r.ev, &r.audit_actor)?;
            head.last_seq = seq;
            head.at = at;
            head.touched = true;
            cols.conversation_id.push(&r.conv_id);
            cols.seq.push(seq);
            cols.tenant_id.push(&r.tenant_id);
            cols.at.push(at);
            cols.channel.push(r.ev.channel.as_str());
            cols.kind.push(r.ev.kind.as_str());
            cols.actor_type.push(r.ev.actor.actor_type.as_str());
            cols.actor_id.push(r.ev.actor.id.as_deref());
            cols.idempotency_key.push(r.ev.idempotency_key.as_deref());
            cols.payload.push(row.sealed);
            audits.entry(&r.tenant_id).or_default().push(row.audit);
            Ok::<_, StoreError>(Slot::Created(row.event))
        })()?;
        slots.push(slot);
    }
    let (mut conv_ids, mut last_seqs, mut ats) = (Vec::new(), Vec::new(), Vec::new());
    for (id, h) in heads.iter().filter(|(_, h)| h.touched) {
        conv_ids.push(id.as_str());
        last_seqs.push(h.last_seq);
        ats.push(h.at);
    }

    // Side rows of the few kinds that have them, then the chains' heads
    // (a tenant whose chains are all held opens one: statements of its own).
    for (r, slot) in batch.iter().zip(&slots) {
        if let Slot::Created(e) = slot {
            write_side_rows(conn, &r.tenant_id, &r.conv_id, &r.ev, e.seq, e.at.0)?;
        }
    }
    let mut chains = Vec::new();
    for (t, free) in tenants.iter().zip(&free_heads) {
        let Some(entries) = audits.get(t) else {
            continue;
        };
        let head = match free.first() {
            Some(row) => crate::audit::head_from_row(&crate::db::Row::Pg(row))?,
            None => crate::audit::take_head(conn, t)?,
        };
        chains.push(crate::audit::ChainedRecords::new(
            audit_key, t, head, entries,
        ));
    }
    let mut outbox = OutboxRows::default();
    for (r, slot) in batch.iter().zip(&slots) {
        let (Slot::Created(event), Some(Ok(k)), Some(tenant_hooks)) =
            (slot, keys.get(&r.tenant_id), hooks.get(&r.tenant_id))
        else {
            continue;
        };
        let now = now_micros();
        let d = deliveries_for(k, &r.tenant_id, tenant_hooks, "event.created", now, || {
            serde_json::to_value(event).unwrap_or_default()
        });
        outbox.push(&r.tenant_id, "event.created", now, d);
    }

    // Round trip 2.
    let mut second: Vec<(&str, Params<'_>)> = Vec::new();
    if !cols.seq.is_empty() {
        second.push((
            crate::events::INSERT_MANY_SQL,
            vec![
                &cols.conversation_id,
                &cols.seq,
                &cols.tenant_id,
                &cols.at,
                &cols.channel,
                &cols.kind,
                &cols.actor_type,
                &cols.actor_id,
                &cols.idempotency_key,
                &cols.payload,
            ],
        ));
        second.push((
            crate::conversations::ADVANCE_MANY_SQL,
            vec![&conv_ids, &last_seqs, &ats],
        ));
    }
    for c in &chains {
        second.extend(c.statements());
    }
    if outbox.len() > 0 {
        second.push(outbox.statement());
    }
    second.push(("COMMIT", vec![]));
    let items: Vec<(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])> =
        second.iter().map(|(q, p)| (*q, p.as_slice())).collect();
    all_rows(conn.pg_pipeline(&items)?)?;
    Ok((slots, outbox.len()))
}
