//! [`UserStore`] on PostgreSQL: the same rules as `sqlite/users.rs`
//! (unique names per tenant, a password change or a deletion ends the
//! user's sessions, expired sessions are swept on each login).

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{is_unique_violation, PgControl};
use crate::db::users::*;
use crate::db::StorageError;

const USER_COLUMNS: &str = "u.id, u.tenant_id, u.name, u.password_hash, u.role, u.created_at";

fn user_from_row(r: &Row) -> Result<UserRow, StorageError> {
    let role: String = r.get(4);
    let Some(role) = Role::parse(&role) else {
        return Err(StorageError::Corrupt(format!("unknown role {role:?}")));
    };
    Ok(UserRow {
        id: r.get(0),
        tenant_id: r.get(1),
        name: r.get(2),
        password_hash: r.get(3),
        role,
        created_at: r.get(5),
    })
}

#[async_trait]
impl UserStore for PgControl {
    async fn create_user(&self, user: &UserRow) -> Result<(), StorageError> {
        let c = self.client().await?;
        let r = c
            .execute(
                "INSERT INTO users (id, tenant_id, name, password_hash, role, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &user.id,
                    &user.tenant_id,
                    &user.name,
                    &user.password_hash,
                    &user.role.as_str(),
                    &user.created_at,
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StorageError::Conflict(format!(
                "a user named {:?} already exists in this tenant",
                user.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn user(&self, tenant_id: &str, name: &str) -> Result<Option<UserRow>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant_id = $1 AND u.name = $2"
                ),
                &[&tenant_id, &name],
            )
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, tenant_id: &str) -> Result<Vec<UserRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users u WHERE u.tenant_id = $1 ORDER BY u.name"
                ),
                &[&tenant_id],
            )
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        tenant_id: &str,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
    ) -> Result<bool, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let id: Option<String> = tx
            .query_opt(
                "SELECT id FROM users WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
                &[&tenant_id, &name],
            )
            .await?
            .map(|r| r.get(0));
        let Some(id) = id else { return Ok(false) };
        if let Some(role) = role {
            tx.execute(
                "UPDATE users SET role = $1 WHERE id = $2",
                &[&role.as_str(), &id],
            )
            .await?;
        }
        if let Some(hash) = password_hash {
            tx.execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                &[&hash, &id],
            )
            .await?;
            tx.execute("DELETE FROM sessions WHERE user_id = $1", &[&id])
                .await?;
        }
        tx.commit().await?;
        self.credentials_changed();
        Ok(true)
    }

    async fn delete_user(&self, tenant_id: &str, name: &str) -> Result<bool, StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "DELETE FROM sessions WHERE user_id IN
               (SELECT id FROM users WHERE tenant_id = $1 AND name = $2)",
            &[&tenant_id, &name],
        )
        .await?;
        let n = tx
            .execute(
                "DELETE FROM users WHERE tenant_id = $1 AND name = $2",
                &[&tenant_id, &name],
            )
            .await?;
        tx.commit().await?;
        if n > 0 {
            self.credentials_changed();
        }
        Ok(n > 0)
    }

    async fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf_token: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])
            .await?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&token_hash, &user_id, &csrf_token, &now, &expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRow>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {USER_COLUMNS}, t.name, s.csrf_token, s.expires_at
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     JOIN tenants t ON t.id = u.tenant_id
                     WHERE s.token_hash = $1 AND s.expires_at > $2"
                ),
                &[&token_hash, &now],
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(SessionRow {
            user: user_from_row(&r)?,
            tenant_name: r.get(6),
            csrf_token: r.get(7),
            expires_at: r.get(8),
        }))
    }

    async fn delete_session(&self, token_hash: &str) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])
            .await?;
        self.credentials_changed();
        Ok(())
    }
    async fn create_oidc_provider(&self, p: &OidcProviderRow) -> Result<(), StorageError> {
        let c = self.client().await?;
        let r = c
            .execute(
                "INSERT INTO oidc_providers (id, tenant_id, name, issuer, client_id, secret_nonce,
                     secret_sealed, role_claim, role_map, default_role, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &p.id,
                    &p.tenant_id,
                    &p.name,
                    &p.issuer,
                    &p.client_id,
                    &p.secret_nonce,
                    &p.secret_sealed,
                    &p.role_claim,
                    &p.role_map,
                    &p.default_role.map(Role::as_str),
                    &p.created_at,
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StorageError::Conflict(format!(
                "a provider named {:?} already exists in this tenant",
                p.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn oidc_providers(&self, tenant_id: &str) -> Result<Vec<OidcProviderRow>, StorageError> {
        self.providers(tenant_id, None).await
    }

    async fn oidc_provider(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<OidcProviderRow>, StorageError> {
        Ok(self.providers(tenant_id, Some(name)).await?.pop())
    }

    async fn delete_oidc_provider(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<bool, StorageError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "DELETE FROM oidc_providers WHERE tenant_id = $1 AND name = $2",
                &[&tenant_id, &name],
            )
            .await?;
        Ok(n > 0)
    }

    async fn oidc_user(
        &self,
        provider_id: &str,
        subject: &str,
    ) -> Result<Option<UserRow>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {USER_COLUMNS} FROM oidc_identities i JOIN users u ON u.id = i.user_id
                     WHERE i.provider_id = $1 AND i.subject = $2"
                ),
                &[&provider_id, &subject],
            )
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn create_oidc_user(
        &self,
        user: &UserRow,
        provider_id: &str,
        subject: &str,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let r = tx
            .execute(
                "INSERT INTO users (id, tenant_id, name, password_hash, role, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &user.id,
                    &user.tenant_id,
                    &user.name,
                    &user.password_hash,
                    &user.role.as_str(),
                    &user.created_at,
                ],
            )
            .await;
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StorageError::Conflict(format!(
                    "a user named {:?} already exists in this tenant",
                    user.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tx.execute(
            "INSERT INTO oidc_identities (provider_id, subject, user_id) VALUES ($1, $2, $3)",
            &[&provider_id, &subject, &user.id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn password_login(&self, tenant_id: &str) -> Result<bool, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT password_login FROM login_policy WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, bool>(0)).unwrap_or(true))
    }

    async fn set_password_login(&self, tenant_id: &str, allowed: bool) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO login_policy (tenant_id, password_login) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET password_login = excluded.password_login",
            &[&tenant_id, &allowed],
        )
        .await?;
        if !allowed {
            // As on SQLite: the password users' sessions end with the policy.
            tx.execute(
                "DELETE FROM sessions WHERE user_id IN
                   (SELECT id FROM users WHERE tenant_id = $1
                      AND id NOT IN (SELECT user_id FROM oidc_identities))",
                &[&tenant_id],
            )
            .await?;
        }
        tx.commit().await?;
        self.credentials_changed();
        Ok(())
    }
}

impl PgControl {
    async fn providers(
        &self,
        tenant_id: &str,
        name: Option<&str>,
    ) -> Result<Vec<OidcProviderRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, tenant_id, name, issuer, client_id, secret_nonce, secret_sealed,
                        role_claim, role_map, default_role, created_at
                 FROM oidc_providers WHERE tenant_id = $1 AND ($2::TEXT IS NULL OR name = $2)
                 ORDER BY name",
                &[&tenant_id, &name],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let default_role = match r.get::<_, Option<String>>(9) {
                    None => None,
                    Some(role) => Some(Role::parse(&role).ok_or_else(|| {
                        StorageError::Corrupt(format!("unknown default role {role:?}"))
                    })?),
                };
                Ok(OidcProviderRow {
                    id: r.get(0),
                    tenant_id: r.get(1),
                    name: r.get(2),
                    issuer: r.get(3),
                    client_id: r.get(4),
                    secret_nonce: r.get(5),
                    secret_sealed: r.get(6),
                    role_claim: r.get(7),
                    role_map: r.get(8),
                    default_role,
                    created_at: r.get(10),
                })
            })
            .collect()
    }
}
