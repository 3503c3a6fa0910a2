//! The audit trail (`audit/`): who did what, from where, with what result,
//! as one append-only, hash-chained list of entries.
//!
//! ```text
//! audit_entries (seq) at_ms, tenant_id, actor_kind, actor_id, actor_label,
//!                     client, action, target, params, result, detail,
//!                     prev_hash, hash
//! audit_anchor  (id = 1) seq, hash     the last entry retention removed
//! ```
//!
//! Each entry's `hash` is SHA-256 over its own fields and `prev_hash`, the
//! hash of the entry before it (64 zeros before the first): [`entry_hash`].
//! Changing a field breaks that entry's hash; rewriting the hash too breaks
//! the next entry's link; deleting an entry leaves a gap in `seq`.
//! [`verify_chain`] walks the entries and names the first that does not
//! hold. Both backends store the same columns and hash the same way, so a
//! trail copied from SQLite to PostgreSQL (`tether-server migrate`)
//! verifies there as it did here.
//!
//! Both refuse UPDATE and any DELETE above the anchor (triggers), so only
//! retention removes entries (oldest first, moving the anchor in the same
//! transaction); someone with the database can drop the triggers, which is
//! what the chain is for. Removing the newest entries is caught only
//! against a head kept elsewhere: a running server keeps the newest entry
//! it wrote in memory (`verify` compares), and `audit verify` prints the
//! head so an operator can write it down.

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::StorageError;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry to append: everything but its place in the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewEntry {
    pub at_ms: i64,
    pub tenant_id: Option<String>,
    /// `admin`, `token`, `user`, `runner` or `none` (not authenticated).
    pub actor_kind: String,
    /// Token or user id (empty for admin and none).
    pub actor_id: String,
    /// Token label or user name.
    pub actor_label: String,
    /// The client's IP address.
    pub client: String,
    /// `METHOD /route/{template}`, or a host event's name.
    pub action: String,
    /// What it acted on: the request path, or the object's id.
    pub target: String,
    /// JSON: the request's parameters with secret values replaced.
    pub params: String,
    /// The HTTP status of the answer (or 0 for events without one).
    pub result: u16,
    /// A short word on the result (error code, refusal reason).
    pub detail: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: NewEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters of a query; every one optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// `None`: every tenant (the admin token).
    pub tenant: Option<String>,
    /// Actor id or label, exactly.
    pub actor: Option<String>,
    /// A substring of the action.
    pub action: Option<String>,
    /// A substring of the target.
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Entries after this sequence number (paging).
    pub after_seq: Option<i64>,
    pub limit: usize,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub entries: u64,
    /// The last entry's seq and hash (the head to write down).
    pub head_seq: i64,
    pub head_hash: String,
    /// The first entry that does not hold, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The audit trail's storage. `append` is a total order: with several
/// replicas on one PostgreSQL, each append holds the trail's lock.
#[async_trait]
pub trait TrailStore: Send + Sync {
    async fn append(&self, e: NewEntry) -> Result<Entry, StorageError>;
    async fn query(&self, q: &AuditQuery) -> Result<Vec<Entry>, StorageError>;
    /// The whole chain from the anchor, and whether the newest entry this
    /// process wrote is still there.
    async fn verify(&self) -> Result<Verification, StorageError>;
    /// Remove entries older than `before_ms`; returns how many.
    async fn prune(&self, before_ms: i64) -> Result<usize, StorageError>;
    /// Housekeeping off the request path, every few seconds.
    async fn checkpoint(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A verification whose chain holds but ends before `head` (the newest
/// entry this process wrote): the newest entries were removed.
pub fn check_head(mut found: Verification, head: (i64, &str)) -> Verification {
    if found.ok && found.head_seq < head.0 {
        found.ok = false;
        found.first_bad = Some(found.head_seq + 1);
        found.reason = Some(format!(
            "the newest entries were removed: this server wrote up to entry {}, \
             the table ends at {}",
            head.0, found.head_seq
        ));
    }
    found
}

/// SHA-256 hex of an entry's fields and the previous hash, in a fixed
/// order (a JSON array: unambiguous, whatever the fields contain).
pub fn entry_hash(seq: i64, e: &NewEntry, prev_hash: &str) -> String {
    let fields = serde_json::json!([
        seq,
        e.at_ms,
        e.tenant_id,
        e.actor_kind,
        e.actor_id,
        e.actor_label,
        e.client,
        e.action,
        e.target,
        e.params,
        e.result,
        e.detail,
        prev_hash
    ]);
    let digest = Sha256::digest(fields.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Walk entries in `seq` order from the anchor; name the first that breaks
/// the chain. Pure: the store feeds it rows.
pub fn verify_chain(anchor: (i64, &str), rows: impl IntoIterator<Item = Entry>) -> Verification {
    let (mut want_seq, mut want_prev) = (anchor.0 + 1, anchor.1.to_owned());
    let mut count = 0u64;
    let bad = |seq: i64, why: String, count: u64, head: (i64, String)| Verification {
        ok: false,
        entries: count,
        head_seq: head.0,
        head_hash: head.1,
        first_bad: Some(seq),
        reason: Some(why),
    };
    let mut last: Option<Entry> = None;
    for row in rows {
        count += 1;
        let head = (row.seq, row.hash.clone());
        if row.seq != want_seq {
            return bad(
                want_seq,
                format!(
                    "entry {want_seq} is missing (deleted): the next entry is {}",
                    row.seq
                ),
                count,
                head,
            );
        }
        if row.prev_hash != want_prev {
            // The entry before held together by itself, yet this one links
            // to something else: the one before had its hash rewritten.
            return match last {
                Some(prev) => bad(
                    prev.seq,
                    format!(
                        "entry {} was changed and its hash rewritten: entry {} links to another",
                        prev.seq, row.seq
                    ),
                    count,
                    head,
                ),
                None => bad(
                    row.seq,
                    format!("entry {} does not link to the retention anchor", row.seq),
                    count,
                    head,
                ),
            };
        }
        if entry_hash(row.seq, &row.entry, &row.prev_hash) != row.hash {
            return bad(
                row.seq,
                format!(
                    "entry {} was changed: its fields do not match its hash",
                    row.seq
                ),
                count,
                head,
            );
        }
        want_seq = row.seq + 1;
        want_prev = row.hash.clone();
        last = Some(row);
    }
    let (head_seq, head_hash) = last
        .map(|l| (l.seq, l.hash))
        .unwrap_or((anchor.0, anchor.1.to_owned()));
    Verification {
        ok: true,
        entries: count,
        head_seq,
        head_hash,
        first_bad: None,
        reason: None,
    }
}
