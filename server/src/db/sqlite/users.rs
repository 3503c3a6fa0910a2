//! Dashboard users and their browser sessions (the SQL for them; `users/mod.rs`
//! is the logic: password hashing, cookies, endpoints).
//!
//! A user belongs to one tenant and has one [`Role`]. A session row is keyed
//! by the SHA-256 of the cookie's secret (like every other credential) and
//! carries its CSRF token and expiry. The role is read through the user on
//! every lookup, so a role change or a deleted user takes effect on the next
//! request, not when the session ends.
//!
//! Bounds: expired sessions are deleted whenever a new one is made.
//!
//! Every write that can take authority away (a role or password change, a
//! deleted user or session) ends with `credentials_changed`, which wakes
//! the open streams to re-check theirs (`common/stream_auth.rs`).

use rusqlite::{params, OptionalExtension, Row};

use super::control::SqliteControl;
use crate::db::users::*;
use crate::db::StorageError;

const USER_COLUMNS: &str = "u.id, u.tenant_id, u.name, u.password_hash, u.role, u.created_at";

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<Result<UserRow, StorageError>> {
    let role: String = r.get(4)?;
    let Some(role) = Role::parse(&role) else {
        return Ok(Err(StorageError::Corrupt(format!("unknown role {role:?}"))));
    };
    Ok(Ok(UserRow {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        password_hash: r.get(3)?,
        role,
        created_at: r.get(5)?,
    }))
}

impl SqliteControl {
    /// The id of a tenant named by its id or its name.
    pub fn tenant_id_by_id_or_name(&self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id FROM tenants WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// `Conflict` if the name is taken in the tenant.
    pub fn create_user(&self, user: &UserRow) -> Result<(), StorageError> {
        let r = self.conn().execute(
            "INSERT INTO users (id, tenant_id, name, password_hash, role, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                user.id,
                user.tenant_id,
                user.name,
                user.password_hash,
                user.role.as_str(),
                user.created_at
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StorageError::Conflict(format!(
                    "a user named {:?} already exists in this tenant",
                    user.name
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn user(&self, tenant_id: &str, name: &str) -> Result<Option<UserRow>, StorageError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant_id = ?1 AND u.name = ?2"
                ),
                params![tenant_id, name],
                user_from_row,
            )
            .optional()?;
        row.transpose()
    }

    pub fn list_users(&self, tenant_id: &str) -> Result<Vec<UserRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant_id = ?1 ORDER BY u.name"
        ))?;
        let rows = stmt.query_map(params![tenant_id], user_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Change a user's role and/or password hash; whether the user exists.
    /// A new password ends the user's sessions (a stolen cookie dies with it).
    pub fn update_user(
        &self,
        tenant_id: &str,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
    ) -> Result<bool, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id: Option<String> = tx
            .query_row(
                "SELECT id FROM users WHERE tenant_id = ?1 AND name = ?2",
                params![tenant_id, name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(false) };
        if let Some(role) = role {
            tx.execute(
                "UPDATE users SET role = ?1 WHERE id = ?2",
                params![role.as_str(), id],
            )?;
        }
        if let Some(hash) = password_hash {
            tx.execute(
                "UPDATE users SET password_hash = ?1 WHERE id = ?2",
                params![hash, id],
            )?;
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", params![id])?;
        }
        tx.commit()?;
        drop(conn);
        self.credentials_changed();
        Ok(true)
    }

    /// Delete a user and its sessions; whether it existed.
    pub fn delete_user(&self, tenant_id: &str, name: &str) -> Result<bool, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM sessions WHERE user_id IN
               (SELECT id FROM users WHERE tenant_id = ?1 AND name = ?2)",
            params![tenant_id, name],
        )?;
        let n = tx.execute(
            "DELETE FROM users WHERE tenant_id = ?1 AND name = ?2",
            params![tenant_id, name],
        )?;
        tx.commit()?;
        drop(conn);
        if n > 0 {
            self.credentials_changed();
        }
        Ok(n > 0)
    }

    /// Store a new session, and drop every expired one.
    pub fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf_token: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, user_id, csrf_token, now, expires_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The session of a cookie, if it exists and has not expired by `now`.
    pub fn session(&self, token_hash: &str, now: i64) -> Result<Option<SessionRow>, StorageError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {USER_COLUMNS}, t.name, s.csrf_token, s.expires_at
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     JOIN tenants t ON t.id = u.tenant_id
                     WHERE s.token_hash = ?1 AND s.expires_at > ?2"
                ),
                params![token_hash, now],
                |r| Ok(user_from_row(r)?.map(|user| (user, r.get(6), r.get(7), r.get(8)))),
            )
            .optional()?;
        match row.transpose()? {
            None => Ok(None),
            Some((user, tenant_name, csrf_token, expires_at)) => Ok(Some(SessionRow {
                user,
                tenant_name: tenant_name?,
                csrf_token: csrf_token?,
                expires_at: expires_at?,
            })),
        }
    }

    pub fn delete_session(&self, token_hash: &str) -> Result<(), StorageError> {
        self.conn().execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            params![token_hash],
        )?;
        self.credentials_changed();
        Ok(())
    }
    // ---- single sign-on ----

    pub fn create_oidc_provider(&self, p: &OidcProviderRow) -> Result<(), StorageError> {
        let r = self.conn().execute(
            "INSERT INTO oidc_providers (id, tenant_id, name, issuer, client_id, secret_nonce,
                 secret_sealed, role_claim, role_map, default_role, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                p.id,
                p.tenant_id,
                p.name,
                p.issuer,
                p.client_id,
                p.secret_nonce,
                p.secret_sealed,
                p.role_claim,
                p.role_map,
                p.default_role.map(Role::as_str),
                p.created_at
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StorageError::Conflict(format!(
                    "a provider named {:?} already exists in this tenant",
                    p.name
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn oidc_providers(
        &self,
        tenant_id: &str,
        name: Option<&str>,
    ) -> Result<Vec<OidcProviderRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, tenant_id, name, issuer, client_id, secret_nonce, secret_sealed,
                    role_claim, role_map, default_role, created_at
             FROM oidc_providers WHERE tenant_id = ?1 AND (?2 IS NULL OR name = ?2)
             ORDER BY name",
        )?;
        let rows = stmt.query_map(params![tenant_id, name], |r| {
            let default_role: Option<String> = r.get(9)?;
            Ok((
                OidcProviderRow {
                    id: r.get(0)?,
                    tenant_id: r.get(1)?,
                    name: r.get(2)?,
                    issuer: r.get(3)?,
                    client_id: r.get(4)?,
                    secret_nonce: r.get(5)?,
                    secret_sealed: r.get(6)?,
                    role_claim: r.get(7)?,
                    role_map: r.get(8)?,
                    default_role: None,
                    created_at: r.get(10)?,
                },
                default_role,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (mut row, role) = r?;
            if let Some(role) = role {
                row.default_role = Some(Role::parse(&role).ok_or_else(|| {
                    StorageError::Corrupt(format!("unknown default role {role:?}"))
                })?);
            }
            out.push(row);
        }
        Ok(out)
    }

    pub fn delete_oidc_provider(&self, tenant_id: &str, name: &str) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "DELETE FROM oidc_providers WHERE tenant_id = ?1 AND name = ?2",
            params![tenant_id, name],
        )?;
        Ok(n > 0)
    }

    pub fn oidc_user(
        &self,
        provider_id: &str,
        subject: &str,
    ) -> Result<Option<UserRow>, StorageError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {USER_COLUMNS} FROM oidc_identities i JOIN users u ON u.id = i.user_id
                     WHERE i.provider_id = ?1 AND i.subject = ?2"
                ),
                params![provider_id, subject],
                user_from_row,
            )
            .optional()?;
        row.transpose()
    }

    pub fn create_oidc_user(
        &self,
        user: &UserRow,
        provider_id: &str,
        subject: &str,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let taken = tx
            .query_row(
                "SELECT 1 FROM users WHERE tenant_id = ?1 AND name = ?2",
                params![user.tenant_id, user.name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if taken {
            return Err(StorageError::Conflict(format!(
                "a user named {:?} already exists in this tenant",
                user.name
            )));
        }
        tx.execute(
            "INSERT INTO users (id, tenant_id, name, password_hash, role, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                user.id,
                user.tenant_id,
                user.name,
                user.password_hash,
                user.role.as_str(),
                user.created_at
            ],
        )?;
        tx.execute(
            "INSERT INTO oidc_identities (provider_id, subject, user_id) VALUES (?1, ?2, ?3)",
            params![provider_id, subject, user.id],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn password_login(&self, tenant_id: &str) -> Result<bool, StorageError> {
        let allowed: Option<bool> = self
            .conn()
            .query_row(
                "SELECT password_login FROM login_policy WHERE tenant_id = ?1",
                params![tenant_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(allowed.unwrap_or(true))
    }

    /// Switching password logins off ends the password users' sessions
    /// (those not made by single sign-on): a policy that leaves them
    /// logged in would not be one.
    pub fn set_password_login(&self, tenant_id: &str, allowed: bool) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO login_policy (tenant_id, password_login) VALUES (?1, ?2)
             ON CONFLICT (tenant_id) DO UPDATE SET password_login = excluded.password_login",
            params![tenant_id, allowed],
        )?;
        if !allowed {
            tx.execute(
                "DELETE FROM sessions WHERE user_id IN
                   (SELECT id FROM users WHERE tenant_id = ?1
                      AND id NOT IN (SELECT user_id FROM oidc_identities))",
                params![tenant_id],
            )?;
        }
        tx.commit()?;
        drop(conn);
        self.credentials_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::TenantRow;

    fn setup() -> (SqliteControl, UserRow) {
        let s = SqliteControl::open_in_memory().unwrap();
        let t = TenantRow {
            id: "tn_1".into(),
            name: "acme".into(),
            created_at: 1,
        };
        s.create_tenant(&t, "at_1", "h1").unwrap();
        let u = UserRow {
            id: "us_1".into(),
            tenant_id: "tn_1".into(),
            name: "ada".into(),
            password_hash: "x".into(),
            role: Role::Viewer,
            created_at: 5,
        };
        s.create_user(&u).unwrap();
        (s, u)
    }

    #[test]
    fn users_are_unique_per_tenant_and_roles_round_trip() {
        let (s, u) = setup();
        assert!(matches!(s.create_user(&u), Err(StorageError::Conflict(_))));
        assert_eq!(s.user("tn_1", "ada").unwrap(), Some(u.clone()));
        assert_eq!(s.user("tn_2", "ada").unwrap(), None);
        assert_eq!(
            s.tenant_id_by_id_or_name("acme").unwrap().as_deref(),
            Some("tn_1")
        );
        assert_eq!(
            s.tenant_id_by_id_or_name("tn_1").unwrap().as_deref(),
            Some("tn_1")
        );
        assert!(s
            .update_user("tn_1", "ada", Some(Role::Admin), None)
            .unwrap());
        assert_eq!(s.list_users("tn_1").unwrap()[0].role, Role::Admin);
        assert!(!s
            .update_user("tn_1", "bob", Some(Role::Admin), None)
            .unwrap());
    }

    #[test]
    fn sessions_expire_and_die_with_password_change_or_user() {
        let (s, u) = setup();
        s.create_session("sh", &u.id, "csrf", 10, 100).unwrap();
        let got = s.session("sh", 50).unwrap().unwrap();
        assert_eq!(
            (got.tenant_name.as_str(), got.csrf_token.as_str()),
            ("acme", "csrf")
        );
        assert_eq!(s.session("sh", 100).unwrap(), None, "expired at 100");
        // A role change keeps the session but shows at once.
        s.update_user("tn_1", "ada", Some(Role::Operator), None)
            .unwrap();
        assert_eq!(
            s.session("sh", 50).unwrap().unwrap().user.role,
            Role::Operator
        );
        s.update_user("tn_1", "ada", None, Some("y")).unwrap();
        assert_eq!(
            s.session("sh", 50).unwrap(),
            None,
            "password change ends sessions"
        );
        s.create_session("sh2", &u.id, "c", 10, 100).unwrap();
        assert!(s.delete_user("tn_1", "ada").unwrap());
        assert_eq!(s.session("sh2", 50).unwrap(), None);
        assert!(!s.delete_user("tn_1", "ada").unwrap());
    }
}
