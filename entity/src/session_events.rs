//! A lifecycle event of a session (preparing, running, terminated, ...), kept so
//! that event streams can resume from any event.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// One row of `session_events`; `id` orders the events.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "session_events")]
pub struct Model {
    /// The event's position: streams resume after an id (`Last-Event-ID`).
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The owning keypair.
    pub access_key: String,
    /// The session's kernel.
    pub kernel_id: Uuid,
    /// The client's session token.
    pub sess_id: String,
    /// The new status, lower-case (`preparing`, `running`, `terminated`, ...).
    pub name: String,
    /// Why (`user-requested`, `agent-lost`, ...), when known.
    pub reason: Option<String>,
    /// When it happened.
    pub created_at: DateTimeWithTimeZone,
}

/// Events relate to nothing else: they outlive their rows' changes.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
