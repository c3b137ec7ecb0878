//! An API keypair: the credential a client signs its requests with, plus the
//! quota and rate limit that apply to it.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// One row of `keypairs`.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "keypairs")]
pub struct Model {
    /// The public half of the credential, e.g. `AKIAIOSFODNN7EXAMPLE`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub access_key: String,
    /// The user owning the key (an e-mail address, or a number written as a string).
    pub user_id: String,
    /// The secret half; never logged nor shown in `Debug`.
    pub secret_key: String,
    /// Inactive keys are refused by the gateway.
    pub is_active: bool,
    /// Admin keys see the admin GraphQL schema.
    pub is_admin: bool,
    /// Name of the resource policy, free-form for now.
    pub resource_policy: Option<String>,
    /// When the key was created.
    pub created_at: DateTimeWithTimeZone,
    /// When the key last signed a request (updated in batches).
    pub last_used: Option<DateTimeWithTimeZone>,
    /// How many live sessions the key may own at once.
    pub concurrency_limit: i32,
    /// How many live sessions the key owns now.
    pub concurrency_used: i32,
    /// Requests allowed per 15-minute window.
    pub rate_limit: i32,
    /// Requests signed with this key, ever.
    pub num_queries: i64,
    /// Seconds a session of the key may go unused before it is reclaimed; 0: never.
    pub idle_timeout: i32,
    /// Seconds a session of the key may run at all (from RUNNING); 0: no limit.
    pub max_session_lifetime: i32,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("keypairs::Model")
            .field("access_key", &self.access_key)
            .field("user_id", &self.user_id)
            .field("secret_key", &"<redacted>")
            .field("is_active", &self.is_active)
            .field("is_admin", &self.is_admin)
            .field("resource_policy", &self.resource_policy)
            .field("created_at", &self.created_at)
            .field("last_used", &self.last_used)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("concurrency_used", &self.concurrency_used)
            .field("rate_limit", &self.rate_limit)
            .field("num_queries", &self.num_queries)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_session_lifetime", &self.max_session_lifetime)
            .finish()
    }
}

/// Relations of a keypair.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Sessions created with the key.
    #[sea_orm(has_many = "super::kernels::Entity")]
    Kernels,
    /// Virtual folders owned by the key.
    #[sea_orm(has_many = "super::vfolders::Entity")]
    Vfolders,
}

impl Related<super::kernels::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Kernels.def()
    }
}

impl Related<super::vfolders::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Vfolders.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
