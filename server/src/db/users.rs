//! Dashboard users and their browser sessions (`users/mod.rs` is the logic:
//! passwords, cookies, management).

use async_trait::async_trait;

use super::StorageError;

#[async_trait]
pub trait UserStore: Send + Sync {
    async fn create_user(&self, user: &UserRow) -> Result<(), StorageError>;
    async fn user(&self, tenant_id: &str, name: &str) -> Result<Option<UserRow>, StorageError>;
    async fn list_users(&self, tenant_id: &str) -> Result<Vec<UserRow>, StorageError>;
    /// Change a user's role and/or password; `false` if there is no such user.
    async fn update_user(
        &self,
        tenant_id: &str,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
    ) -> Result<bool, StorageError>;
    async fn delete_user(&self, tenant_id: &str, name: &str) -> Result<bool, StorageError>;
    async fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf_token: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StorageError>;
    /// The live session with this hash, with its user.
    async fn session(&self, token_hash: &str, now: i64)
        -> Result<Option<SessionRow>, StorageError>;
    async fn delete_session(&self, token_hash: &str) -> Result<(), StorageError>;

    // ---- single sign-on (`users/sso.rs`) ----

    /// `Conflict` if the tenant has a provider of that name.
    async fn create_oidc_provider(&self, provider: &OidcProviderRow) -> Result<(), StorageError>;
    async fn oidc_providers(&self, tenant_id: &str) -> Result<Vec<OidcProviderRow>, StorageError>;
    async fn oidc_provider(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<OidcProviderRow>, StorageError>;
    /// Whether it existed; the links of its users go with it (the users stay).
    async fn delete_oidc_provider(&self, tenant_id: &str, name: &str)
        -> Result<bool, StorageError>;
    /// The user a provider's subject was made into at its first login.
    async fn oidc_user(
        &self,
        provider_id: &str,
        subject: &str,
    ) -> Result<Option<UserRow>, StorageError>;
    /// A user made at its first single sign-on, with its link to the
    /// provider's subject, in one transaction; `Conflict` if the name is taken.
    async fn create_oidc_user(
        &self,
        user: &UserRow,
        provider_id: &str,
        subject: &str,
    ) -> Result<(), StorageError>;
    /// Whether the tenant's users may log in with a password (the default).
    async fn password_login(&self, tenant_id: &str) -> Result<bool, StorageError>;
    async fn set_password_login(&self, tenant_id: &str, allowed: bool) -> Result<(), StorageError>;
}

/// An OpenID Connect provider a tenant's users may log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProviderRow {
    pub id: String,
    pub tenant_id: String,
    /// The tenant's name for it (the login page's button, the API's key).
    pub name: String,
    /// The issuer URL, exactly as the provider's ID tokens name it.
    pub issuer: String,
    pub client_id: String,
    /// The client secret, sealed (`common/secrets.rs`) with `(tenant, "oidc/" + id)`.
    pub secret_nonce: Vec<u8>,
    pub secret_sealed: Vec<u8>,
    /// The ID token claim that carries the role (a string or a list of them).
    pub role_claim: String,
    /// Claim value → role, as JSON (`{"tether-admins":"admin"}`).
    pub role_map: String,
    /// The role of a user whose claim maps to none; `None`: refused.
    pub default_role: Option<Role>,
    pub created_at: i64,
}

/// What a user may do in its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything an API token may, and user management.
    Admin,
    /// Everything but user management and API tokens.
    Operator,
    /// Reads only: every state-changing request is refused.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
    pub role: Role,
    pub created_at: i64,
}

/// A live session with its user, as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user: UserRow,
    pub tenant_name: String,
    pub csrf_token: String,
    pub expires_at: i64,
}
