//! API tokens: who made each one, when it was last used, when it expires,
//! and its revocation (the SQL; `runners/api.rs` has the endpoints, `common/auth.rs` the
//! check on every request).
//!
//! A token acts with the authority of whoever minted it, and no longer
//! than they hold it:
//!
//! ```text
//!  minted by          created_by_user        valid while
//!  tenant creation    NULL                   not revoked, not expired
//!  (admin token)
//!  a dashboard admin  that user's id         ... and that user exists and is still an admin
//!  another API token  the parent's user      ... and so on: a child never outlives
//!                     (or NULL)              the user behind its parent
//! ```
//!
//! The creator check is a join at lookup time rather than a cascade at
//! delete time, so it also holds for users deleted by any other path.
//! The columns are added here with `ADD COLUMN` (checked by name, like
//! `storage/terminals.rs` creates its table) rather than as a numbered
//! migration, so this file's schema stands apart from the others'.
//!
//! `last_used_at` is written at most once a minute per token
//! ([`LAST_USED_EVERY_MS`]): a request is a read, not a write.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::control::SqliteControl;
use super::migrate::has_column;
use crate::db::control::*;
use crate::db::StorageError;

/// `last_used_at` is refreshed when older than this.
pub const LAST_USED_EVERY_MS: i64 = 60_000;

/// Migration 8 of tether.db (`control.rs`): columns files of earlier
/// builds got one by one on start, so each is added only if missing.
pub(super) fn create(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    for (column, ty) in [
        ("created_by_user", "TEXT"),
        ("created_by", "TEXT NOT NULL DEFAULT ''"),
        ("expires_at", "INTEGER"),
        ("last_used_at", "INTEGER"),
        ("revoked_reason", "TEXT"),
    ] {
        if !has_column(tx, "api_tokens", column)? {
            tx.execute_batch(&format!("ALTER TABLE api_tokens ADD COLUMN {column} {ty}"))?;
        }
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS api_tokens_by_tenant ON api_tokens(tenant_id, created_at)",
    )
}

/// `a` is the token, `u` its creator (LEFT JOIN: NULL when gone).
const INFO_COLUMNS: &str = "a.id, a.label, a.created_by, a.created_at, a.expires_at, \
     a.last_used_at, a.revoked_at, a.revoked_reason, \
     (a.created_by_user IS NULL OR (u.id IS NOT NULL AND u.role = 'admin'))";
const CREATOR_JOIN: &str = "LEFT JOIN users u ON u.id = a.created_by_user";

fn info_row(r: &Row<'_>) -> rusqlite::Result<ApiTokenInfo> {
    Ok(ApiTokenInfo {
        id: r.get(0)?,
        label: r.get(1)?,
        created_by: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_used_at: r.get(5)?,
        revoked_at: r.get(6)?,
        revoked_reason: r.get(7)?,
        creator_ok: r.get(8)?,
    })
}

impl SqliteControl {
    pub fn create_api_token(
        &self,
        row: &ApiTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError> {
        self.conn().execute(
            "INSERT INTO api_tokens (id, tenant_id, token_hash, label, created_at,
                 created_by_user, created_by, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.id,
                row.tenant_id,
                token_hash,
                row.label,
                row.created_at,
                row.created_by_user,
                row.created_by,
                row.expires_at
            ],
        )?;
        Ok(())
    }

    /// The token behind a hash if it authenticates at `now`, else why not.
    /// Refreshes its `last_used_at` (at most once a minute).
    pub fn api_token_auth(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<ApiTokenAuth, TokenRefusal>, StorageError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT a.tenant_id, a.created_by_user, {INFO_COLUMNS}
                     FROM api_tokens a {CREATOR_JOIN} WHERE a.token_hash = ?1"
                ),
                [token_hash],
                |r| {
                    let tenant: String = r.get(0)?;
                    let user: Option<String> = r.get(1)?;
                    let info = info_row_at(r, 2)?;
                    Ok((tenant, user, info))
                },
            )
            .optional()?;
        let Some((tenant_id, created_by_user, info)) = row else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let refusal = match info.state(now) {
            "revoked" => Some(TokenRefusal::Revoked),
            "expired" => Some(TokenRefusal::Expired),
            "creator_gone" => Some(TokenRefusal::CreatorGone),
            _ => None,
        };
        if let Some(r) = refusal {
            return Ok(Err(r));
        }
        if info
            .last_used_at
            .is_none_or(|t| now - t >= LAST_USED_EVERY_MS)
        {
            conn.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![info.id, now],
            )?;
        }
        Ok(Ok(ApiTokenAuth {
            id: info.id,
            label: info.label,
            tenant_id,
            created_by_user,
            expires_at: info.expires_at,
        }))
    }

    /// The token's expiry if it still authenticates, else why not,
    /// without touching `last_used_at` (for streams re-checking what
    /// authenticated them).
    pub fn api_token_check(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<Option<i64>, TokenRefusal>, StorageError> {
        let info = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM api_tokens a {CREATOR_JOIN} WHERE a.token_hash = ?1"
                ),
                [token_hash],
                info_row,
            )
            .optional()?;
        let Some(info) = info else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        Ok(match info.state(now) {
            "revoked" => Err(TokenRefusal::Revoked),
            "expired" => Err(TokenRefusal::Expired),
            "creator_gone" => Err(TokenRefusal::CreatorGone),
            _ => Ok(info.expires_at),
        })
    }

    /// A tenant's API tokens, newest first (revoked ones too: the list is
    /// also the record of what existed).
    pub fn list_api_tokens(&self, tenant_id: &str) -> Result<Vec<ApiTokenInfo>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {INFO_COLUMNS} FROM api_tokens a {CREATOR_JOIN}
             WHERE a.tenant_id = ?1 ORDER BY a.created_at DESC, a.rowid DESC"
        ))?;
        let rows = stmt.query_map([tenant_id], info_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke a tenant's token; `None` if the tenant has no such token. A
    /// token revoked before keeps its first revocation.
    pub fn revoke_api_token(
        &self,
        tenant_id: &str,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<ApiTokenInfo>, StorageError> {
        let info = {
            let conn = self.conn();
            conn.execute(
                "UPDATE api_tokens SET revoked_at = ?3, revoked_reason = ?4
                 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![tenant_id, id, now, reason],
            )?;
            conn.query_row(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM api_tokens a {CREATOR_JOIN}
                     WHERE a.tenant_id = ?1 AND a.id = ?2"
                ),
                params![tenant_id, id],
                info_row,
            )
            .optional()?
        };
        if info.is_some() {
            self.credentials_changed();
        }
        Ok(info)
    }
}

fn info_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<ApiTokenInfo> {
    Ok(ApiTokenInfo {
        id: r.get(at)?,
        label: r.get(at + 1)?,
        created_by: r.get(at + 2)?,
        created_at: r.get(at + 3)?,
        expires_at: r.get(at + 4)?,
        last_used_at: r.get(at + 5)?,
        revoked_at: r.get(at + 6)?,
        revoked_reason: r.get(at + 7)?,
        creator_ok: r.get(at + 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Role, TenantRow, UserRow};

    fn setup() -> SqliteControl {
        let s = SqliteControl::open_in_memory().unwrap();
        let t = TenantRow {
            id: "tn_1".into(),
            name: "acme".into(),
            created_at: 1,
        };
        s.create_tenant(&t, "at_initial", "h_initial").unwrap();
        s.create_user(&UserRow {
            id: "us_ada".into(),
            tenant_id: "tn_1".into(),
            name: "ada".into(),
            password_hash: "x".into(),
            role: Role::Admin,
            created_at: 2,
        })
        .unwrap();
        s
    }

    fn token(s: &SqliteControl, id: &str, user: Option<&str>, expires_at: Option<i64>) {
        let row = ApiTokenRow {
            id: id.into(),
            tenant_id: "tn_1".into(),
            label: Some(format!("label {id}")),
            created_at: 10,
            created_by_user: user.map(str::to_owned),
            created_by: user.map_or("api token".into(), |u| format!("user {u}")),
            expires_at,
        };
        s.create_api_token(&row, &format!("h_{id}")).unwrap();
    }

    #[test]
    fn tokens_die_with_revocation_expiry_and_their_creator() {
        let s = setup();
        token(&s, "at_user", Some("us_ada"), None);
        token(&s, "at_exp", None, Some(100));
        assert_eq!(
            s.api_token_auth("h_at_user", 50)
                .unwrap()
                .unwrap()
                .tenant_id,
            "tn_1"
        );
        assert_eq!(
            s.api_token_auth("h_nope", 50).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        assert!(s.api_token_auth("h_at_exp", 99).unwrap().is_ok());
        assert_eq!(
            s.api_token_auth("h_at_exp", 100).unwrap(),
            Err(TokenRefusal::Expired)
        );
        // Demoted: the token no longer carries admin authority.
        s.update_user("tn_1", "ada", Some(Role::Operator), None)
            .unwrap();
        assert_eq!(
            s.api_token_check("h_at_user", 50).unwrap(),
            Err(TokenRefusal::CreatorGone)
        );
        s.update_user("tn_1", "ada", Some(Role::Admin), None)
            .unwrap();
        assert_eq!(s.api_token_check("h_at_user", 50).unwrap(), Ok(None));
        assert_eq!(s.api_token_check("h_at_exp", 50).unwrap(), Ok(Some(100)));
        assert!(s.delete_user("tn_1", "ada").unwrap());
        assert_eq!(
            s.api_token_auth("h_at_user", 50).unwrap(),
            Err(TokenRefusal::CreatorGone)
        );
        // The initial token has no user behind it.
        assert!(s.api_token_auth("h_initial", 50).unwrap().is_ok());
        let info = s
            .revoke_api_token("tn_1", "at_initial", "revoked by test", 60)
            .unwrap()
            .unwrap();
        assert_eq!(info.state(61), "revoked");
        assert_eq!(
            s.api_token_auth("h_initial", 70).unwrap(),
            Err(TokenRefusal::Revoked)
        );
        assert_eq!(s.revoke_api_token("tn_2", "at_exp", "x", 60).unwrap(), None);
        let list = s.list_api_tokens("tn_1").unwrap();
        let states: Vec<_> = list.iter().map(|t| (t.id.as_str(), t.state(200))).collect();
        assert!(states.contains(&("at_user", "creator_gone")), "{states:?}");
        assert!(states.contains(&("at_exp", "expired")), "{states:?}");
        assert!(states.contains(&("at_initial", "revoked")), "{states:?}");
    }

    #[test]
    fn last_used_is_written_at_most_once_a_minute() {
        let s = setup();
        token(&s, "at_1", None, None);
        let used = |s: &SqliteControl| s.list_api_tokens("tn_1").unwrap()[0].last_used_at;
        s.api_token_auth("h_at_1", 1_000).unwrap().unwrap();
        assert_eq!(used(&s), Some(1_000));
        s.api_token_auth("h_at_1", 30_000).unwrap().unwrap();
        assert_eq!(used(&s), Some(1_000));
        s.api_token_auth("h_at_1", 61_000).unwrap().unwrap();
        assert_eq!(used(&s), Some(61_000));
    }
}
