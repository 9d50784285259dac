//! The endpoint's tables: their sizes (for leak tests and gauges), giving
//! back memory after a burst, and forgetting a call.

use super::{CallId, Endpoint, Output};
use std::collections::HashMap;

/// How many entries each of an [`Endpoint`]'s tables holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveState {
    pub calls: usize,
    /// (Call-ID, local tag) to call.
    pub dialogs: usize,
    /// INVITEs being answered, for merged-request detection.
    pub merged: usize,
    pub client_transactions: usize,
    pub server_transactions: usize,
    /// Stream (TCP/TLS) framing state, one per connection.
    pub framers: usize,
    /// Outputs not yet polled.
    pub outputs: usize,
}

impl LiveState {
    /// Whether nothing at all is held.
    pub fn is_empty(&self) -> bool {
        *self == LiveState::default()
    }

    /// (kind, count) pairs, for gauges.
    pub fn kinds(&self) -> [(&'static str, usize); 7] {
        [
            ("calls", self.calls),
            ("dialogs", self.dialogs),
            ("merged", self.merged),
            ("client_transactions", self.client_transactions),
            ("server_transactions", self.server_transactions),
            ("framers", self.framers),
            ("outputs", self.outputs),
        ]
    }
}

impl Endpoint {
    /// Calls alive (for metrics and tests).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Transactions alive (for metrics and tests).
    pub fn transaction_count(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    /// The size of every internal table: all zero once the calls are over
    /// and the transaction timers have run (for leak tests and gauges).
    pub fn live_state(&self) -> LiveState {
        LiveState {
            calls: self.calls.len(),
            dialogs: self.dialogs.len(),
            merged: self.merged.len(),
            client_transactions: self.clients.len(),
            server_transactions: self.servers.len(),
            framers: self.framers.len(),
            outputs: self.outputs.len(),
        }
    }

    /// Bytes the tables hold for their buckets (entries' own heap not
    /// counted): what a burst leaves behind if the tables are not shrunk.
    pub fn table_bytes(&self) -> usize {
        table_bytes(&self.calls)
            + table_bytes(&self.dialogs)
            + table_bytes(&self.merged)
            + table_bytes(&self.clients)
            + table_bytes(&self.servers)
            + table_bytes(&self.framers)
            + self.outputs.capacity() * std::mem::size_of::<Output>()
    }

    /// Gives back the memory of tables a burst left mostly empty.
    pub(super) fn shrink(&mut self) {
        shrink_sparse(&mut self.calls);
        shrink_sparse(&mut self.dialogs);
        shrink_sparse(&mut self.merged);
        shrink_sparse(&mut self.clients);
        shrink_sparse(&mut self.servers);
        shrink_sparse(&mut self.framers);
        if self.outputs.capacity() > SPARSE_KEEP && self.outputs.len() * 8 < self.outputs.capacity()
        {
            self.outputs
                .shrink_to((self.outputs.len() * 2).max(SPARSE_KEEP / 2));
        }
    }

    pub(super) fn remove_call(&mut self, id: CallId) {
        if let Some(c) = self.calls.remove(&id) {
            let call_id = c
                .dialog
                .as_ref()
                .map(|d| d.call_id.clone())
                .or_else(|| c.invite.as_ref().map(|r| r.core.call_id.clone()))
                .or_else(|| c.uac_meta.as_ref().map(|m| m.call_id.clone()));
            if let Some(call_id) = call_id {
                self.dialogs.remove(&(call_id, c.local_tag.clone()));
            }
            if let Some(k) = c.merged_key {
                self.merged.remove(&k);
            }
        }
    }
}

/// Below this many slots a table is left alone.
const SPARSE_KEEP: usize = 64;

/// Shrinks a hash table that is less than an eighth full to about twice its
/// entries. Hash tables never shrink by themselves: a burst of calls (every
/// transaction lingers 32 s for Timer J/L) would keep its peak allocation
/// for the life of the process, which looks like a leak per call. The
/// hysteresis keeps the rehash amortized O(1) per removed entry.
pub fn shrink_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > SPARSE_KEEP && map.len() * 8 < map.capacity() {
        map.shrink_to((map.len() * 2).max(SPARSE_KEEP / 2));
    }
}

/// The bytes a hash table's buckets take (approximately: slots and control bytes).
pub fn table_bytes<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    map.capacity() * (std::mem::size_of::<(K, V)>() + 1)
}
