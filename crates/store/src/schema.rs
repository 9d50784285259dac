//! Schema migrations for both backends, one list. SQLite tracks its version
//! in `user_version`; PostgreSQL in `schema_migrations`, and gets each
//! migration's SQL with SQLite's types spelled as PostgreSQL's (see
//! [`postgres_sql`]) plus what only it needs ([`POSTGRES_EXTRA`]).
//! Hand-rolled rather than a migration crate: it is a few dozen lines, and the
//! migration crates pin their own rusqlite version, which would fight ours.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    r#"
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        region TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        secret_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE staff (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        role TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX staff_tenant ON staff(tenant_id, id);
    CREATE TABLE contacts (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX contacts_tenant ON contacts(tenant_id, id);
    CREATE TABLE contact_bindings (
        tenant_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        lookup BLOB NOT NULL,
        contact_id TEXT NOT NULL REFERENCES contacts(id),
        PRIMARY KEY (tenant_id, kind, lookup)
    ) WITHOUT ROWID;
    CREATE INDEX contact_bindings_contact ON contact_bindings(contact_id);
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        contact_id TEXT NOT NULL REFERENCES contacts(id),
        state TEXT NOT NULL,
        queue TEXT,
        assignee TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        data BLOB NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX conversations_recent ON conversations(tenant_id, updated_at, id);
    CREATE INDEX conversations_contact ON conversations(tenant_id, contact_id);
    CREATE TABLE events (
        conversation_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        tenant_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor_type TEXT NOT NULL,
        actor_id TEXT,
        idempotency_key TEXT,
        payload BLOB NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX events_idempotency ON events(conversation_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- The latest event of a few kinds the context snapshot always shows (last
    -- triage, last channel switch, opt-in/out per channel). Written only on those
    -- rare kinds, instead of a (conversation, kind) index every append would pay for.
    CREATE TABLE event_markers (
        conversation_id TEXT NOT NULL,
        marker TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, marker)
    ) WITHOUT ROWID;
    CREATE TABLE media_sessions (
        conversation_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        started_seq INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT,
        PRIMARY KEY (conversation_id, session_id)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        tenant_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev BLOB NOT NULL,
        mac BLOB NOT NULL,
        PRIMARY KEY (tenant_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        url TEXT NOT NULL,
        event_types TEXT NOT NULL,
        secret BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    CREATE INDEX webhooks_tenant ON webhooks(tenant_id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        webhook_id TEXT NOT NULL REFERENCES webhooks(id),
        event_type TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outbox_id INTEGER NOT NULL REFERENCES outbox(id),
        webhook_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX deliveries_webhook ON deliveries(webhook_id, id);
    "#,
    // 2: video rooms, each a media session of a conversation.
    r#"
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        max_participants INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        ended_at INTEGER
    );
    CREATE INDEX rooms_conversation ON rooms(tenant_id, conversation_id);
    "#,
    // 3: revoked access tokens, kept until they would have expired anyway.
    r#"
    CREATE TABLE revoked_tokens (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        jti TEXT NOT NULL,
        until INTEGER NOT NULL,
        revoked_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, jti)
    ) WITHOUT ROWID;
    CREATE INDEX revoked_tokens_until ON revoked_tokens(until);
    -- Thin webhooks carry ids and kinds only; the receiver fetches the rest
    -- with its own credentials.
    ALTER TABLE webhooks ADD COLUMN payload TEXT NOT NULL DEFAULT 'full';
    "#,
    // 4: a conversation's queue, assignee and tags move into its sealed `data`;
    // assignee and queue are found through keyed blind indexes (HMAC under the
    // tenant's lookup key), like contact bindings. The clear columns `queue`,
    // `assignee` and `tags` stay (dropping a column means rebuilding the table)
    // but are always NULL / '[]' from now on: rows written before this
    // migration are re-sealed by `conversations::seal_clear_labels`, run from
    // `Store::open` right after the migrations, which needs the tenant keys
    // plain SQL does not have.
    r#"
    ALTER TABLE conversations ADD COLUMN assignee_idx BLOB;
    ALTER TABLE conversations ADD COLUMN queue_idx BLOB;
    CREATE INDEX conversations_assignee ON conversations(tenant_id, assignee_idx);
    CREATE INDEX conversations_queue ON conversations(tenant_id, queue_idx);
    -- Rows still holding clear labels: empty once re-sealed, so the check at
    -- every open is an index probe rather than a table scan.
    CREATE INDEX conversations_clear_labels ON conversations(id)
        WHERE queue IS NOT NULL OR assignee IS NOT NULL OR tags != '[]';
    "#,
    // 5: visits. A tenant's visit settings (JSON, no PHI: e.g. whether rooms
    // have a waiting room by default, and who patients contact about a bad
    // link); a room's own waiting-room switch and who ended it.
    r#"
    CREATE TABLE tenant_settings (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        settings TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE rooms ADD COLUMN waiting_room INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: voice. SIP trunks (spec JSON in clear: addresses and the clinic's
    // own numbers; digest password sealed), the numbers inbound trunks carry
    // (a number routes to one tenant), dispatch rules per called number,
    // call records (the remote party sealed), and a dial-in PIN per room
    // (unique among a tenant's open rooms).
    r#"
    CREATE TABLE sip_trunks (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        username TEXT,
        secret BLOB,
        created_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    CREATE INDEX sip_trunks_tenant ON sip_trunks(tenant_id);
    CREATE TABLE sip_numbers (
        number TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        trunk_id TEXT NOT NULL REFERENCES sip_trunks(id)
    ) WITHOUT ROWID;
    CREATE TABLE dispatch_rules (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        number TEXT NOT NULL,
        action TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    CREATE UNIQUE INDEX dispatch_rules_number ON dispatch_rules(tenant_id, number) WHERE deleted_at IS NULL;
    CREATE TABLE calls (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        room_id TEXT,
        direction TEXT NOT NULL,
        state TEXT NOT NULL,
        remote BLOB NOT NULL,
        trunk_id TEXT,
        created_at INTEGER NOT NULL,
        answered_at INTEGER,
        ended_at INTEGER,
        cause TEXT
    );
    CREATE INDEX calls_conversation ON calls(tenant_id, conversation_id);
    CREATE INDEX calls_active_trunk ON calls(trunk_id) WHERE state NOT IN ('ended', 'failed');
    ALTER TABLE rooms ADD COLUMN pin TEXT;
    CREATE UNIQUE INDEX rooms_open_pin ON rooms(tenant_id, pin) WHERE ended_at IS NULL AND pin IS NOT NULL;
    "#,
    // 7: messaging. Providers of a tenant's failover chain (spec in clear,
    // credentials sealed); the outbox of outbound messages (recipient as a
    // blind index, content sealed; the clinic's sender number in clear);
    // inbound provider ids seen (webhooks are re-sent); opt-outs per channel,
    // sender and recipient; when each address last wrote (the WhatsApp
    // customer-service window).
    r#"
    CREATE TABLE messaging_providers (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        spec TEXT NOT NULL,
        secret BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX messaging_providers_name ON messaging_providers(tenant_id, name);
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        event_seq INTEGER NOT NULL,
        channel TEXT NOT NULL,
        recipient BLOB NOT NULL,
        sender TEXT,
        payload BLOB NOT NULL,
        state TEXT NOT NULL,
        provider_id TEXT,
        provider_message_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        -- Failed attempts so far, oldest first: [{"provider", "failure"}]
        -- (what the retry policy reads).
        attempt_log TEXT NOT NULL DEFAULT '[]',
        -- The one reply to STOP/START/HELP: sent whatever the opt-out says.
        compliance INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX messages_due ON messages(next_attempt_at, id) WHERE state = 'queued';
    CREATE INDEX messages_claimed ON messages(id) WHERE state = 'sending';
    CREATE INDEX messages_conversation ON messages(conversation_id, event_seq);
    CREATE INDEX messages_provider_ref ON messages(provider_id, provider_message_id)
        WHERE provider_message_id IS NOT NULL;
    CREATE TABLE inbound_messages (
        provider_id TEXT NOT NULL,
        provider_message_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        event_seq INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (provider_id, provider_message_id)
    ) WITHOUT ROWID;
    CREATE TABLE messaging_consent (
        tenant_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        recipient BLOB NOT NULL,
        sender TEXT NOT NULL,
        opted_out INTEGER NOT NULL,
        keyword TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, channel, recipient, sender)
    ) WITHOUT ROWID;
    CREATE TABLE messaging_windows (
        tenant_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        address BLOB NOT NULL,
        last_inbound_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, channel, address)
    ) WITHOUT ROWID;
    "#,
    // 8: chat receipts. How far each person of a conversation has had it
    // delivered and read (timeline seqs, only ever moving forward): one row
    // per (conversation, identity) rather than a timeline event per
    // message per reader. Identities are ids, never PHI.
    r#"
    CREATE TABLE chat_receipts (
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        identity TEXT NOT NULL,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        role TEXT NOT NULL,
        delivered_seq INTEGER NOT NULL,
        read_seq INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, identity)
    ) WITHOUT ROWID;
    "#,
    // 9: store-and-forward attachments: the record of each sealed blob
    // (bytes in the blob store), its timeline event, and its review.
    // File name, uploader and review note are sealed.
    r#"
    CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        event_seq INTEGER NOT NULL,
        blob_key TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        stripped INTEGER NOT NULL,
        source TEXT NOT NULL,
        data BLOB NOT NULL,
        review_state TEXT NOT NULL,
        reviewed_by TEXT,
        reviewed_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX attachments_review ON attachments(tenant_id, review_state, id);
    CREATE INDEX attachments_conversation ON attachments(conversation_id, id);
    "#,
    // 10: appointment reminders. Per-tenant settings (quiet hours, default time
    // zone, clinic name: JSON, no PHI) and templates (the clinic's text with
    // {{variables}}, offsets, channel, WhatsApp template: in clear, no PHI);
    // appointments (start time and status in clear like event timestamps;
    // location, clinician, patient name and the customer's own id sealed, that
    // id also as a blind index for idempotent re-import); one row per reminder
    // (offset, due time after quiet hours, state, the outbox message it became).
    r#"
    CREATE TABLE reminder_settings (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        settings TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE reminder_templates (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    CREATE UNIQUE INDEX reminder_templates_name ON reminder_templates(tenant_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE appointments (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        contact_id TEXT NOT NULL REFERENCES contacts(id),
        external_idx BLOB,
        template_id TEXT NOT NULL REFERENCES reminder_templates(id),
        start_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX appointments_external ON appointments(tenant_id, external_idx) WHERE external_idx IS NOT NULL;
    CREATE INDEX appointments_conversation ON appointments(conversation_id, start_at);
    CREATE TABLE reminders (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        appointment_id TEXT NOT NULL REFERENCES appointments(id),
        offset_secs INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        message_id TEXT,
        -- Why it moved, was skipped or failed (no PHI).
        detail TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- Due reminders, in order: the scheduler's claim is an index range scan.
    CREATE INDEX reminders_due ON reminders(due_at, id) WHERE state = 'pending';
    CREATE INDEX reminders_appointment ON reminders(appointment_id, offset_secs);
    "#,
    // 11: the front door. IVR flows and business-hours calendars (YAML as
    // written), queues and agents
    // (settings as JSON): the clinic's own configuration, in clear. Routing
    // tasks (one per piece of work routed): which queue a patient's
    // conversation waits in and its triage label are PHI, sealed.
    r#"
    CREATE TABLE ivr_flows (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE business_calendars (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE queues (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE agents (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        id TEXT NOT NULL,
        spec TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE routing_tasks (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        channel TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        agent TEXT,
        -- The queue as a blind index (like conversations.queue_idx); queue,
        -- skills, triage label and call id sealed in `data`.
        queue_idx BLOB NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- Open work: at most one per conversation (create checks), found fast.
    CREATE INDEX routing_tasks_open ON routing_tasks(conversation_id) WHERE state IN ('waiting', 'reserved', 'assigned');
    CREATE INDEX routing_tasks_queue ON routing_tasks(tenant_id, queue_idx, state);
    CREATE INDEX routing_tasks_agent ON routing_tasks(tenant_id, agent) WHERE state = 'assigned';
    "#,
    // 12: several nodes. Which node claimed a message for sending, or leased
    // a webhook delivery, so a node that restarts takes back its own
    // abandoned claims at once (others only once the claim or lease is old).
    r#"
    ALTER TABLE messages ADD COLUMN claimed_by TEXT;
    ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
    "#,
];

/// What PostgreSQL needs beyond a migration's shared SQL, by version.
///
/// Version 1: the audit chain becomes several chains per tenant (see
/// `audit.rs`): a `chain` number in each record's key, a global `position`
/// for paging across chains, and one head row per chain that a writer locks
/// (`FOR UPDATE SKIP LOCKED`) for the length of its transaction.
const POSTGRES_EXTRA: &[(usize, &str)] = &[(
    1,
    r#"
    ALTER TABLE audit ADD COLUMN chain BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE audit ADD COLUMN position BIGINT GENERATED ALWAYS AS IDENTITY;
    ALTER TABLE audit DROP CONSTRAINT audit_pkey;
    ALTER TABLE audit ADD PRIMARY KEY (tenant_id, chain, seq);
    CREATE UNIQUE INDEX audit_position ON audit(tenant_id, position);
    CREATE TABLE audit_heads (
        tenant_id TEXT NOT NULL,
        chain BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        mac BYTEA NOT NULL,
        PRIMARY KEY (tenant_id, chain)
    );
    "#,
)];

/// A migration's SQL as PostgreSQL spells it: 64-bit integers, byte arrays,
/// identity keys, and no `WITHOUT ROWID`.
pub(crate) fn postgres_sql(sql: &str) -> String {
    let mut out = sql
        .replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace(") WITHOUT ROWID;", ");");
    for (from, to) in [
        ("INTEGER", "BIGINT"),
        ("BLOB", "BYTEA"),
        ("REAL", "DOUBLE PRECISION"),
    ] {
        out = replace_word(&out, from, to);
    }
    out
}

/// Replaces whole words only (`INTEGER` but not `INTEGERS`).
fn replace_word(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().last();
        let after = rest[i + from.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        out.push_str(&rest[..i]);
        out.push_str(if word(before) || word(after) {
            from
        } else {
            to
        });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// Brings a PostgreSQL database up to date; returns the version it is now
/// at. Nodes starting together take turns (an advisory lock), and each
/// migration commits with its version row, so a crash mid-way resumes.
pub(crate) fn migrate_postgres(conn: &crate::db::Conn) -> crate::db::Result<usize> {
    use crate::db::params;
    conn.execute_batch(
        "SELECT pg_advisory_lock(7272017);
         CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);",
    )?;
    let result = (|| {
        let current: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            params![],
            |r| r.get(0),
        )?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i + 1;
            let mut all = postgres_sql(sql);
            for (_, extra) in POSTGRES_EXTRA.iter().filter(|(v, _)| *v == version) {
                all.push_str(extra);
            }
            conn.execute_batch("BEGIN")?;
            let applied = conn.execute_batch(&all).and_then(|_| {
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version as i64, crate::now_micros()],
                )
            });
            match applied {
                Ok(_) => conn.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
            tracing::info!(version, "applied PostgreSQL schema migration");
        }
        Ok(MIGRATIONS.len())
    })();
    let _ = conn.execute_batch("SELECT pg_advisory_unlock(7272017)");
    result
}

/// Brings the schema up to date; returns the version it is now at.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<usize> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(MIGRATIONS.len())
}

/// Pragmas every connection gets. FULL sync: a commit is on disk before we ack it.
pub fn configure(conn: &Connection, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if writer {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    } else {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.pragma_update(None, "cache_size", -16_000)?;
    // Savepoint journals stay in memory: every job runs in one.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if writer {
        // Checkpoints run on a separate connection (see `checkpointer`), off the
        // writer's critical path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    Ok(())
}
