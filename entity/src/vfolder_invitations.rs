//! An invitation to share a virtual folder, from its owner to another user.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

pub use super::vfolder_permissions::Permission;

/// One row of `vfolder_invitations`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "vfolder_invitations")]
pub struct Model {
    /// The invitation's id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The permission the invitee gets on accepting.
    pub permission: Permission,
    /// The inviting user's id.
    pub inviter: String,
    /// The invited user's id.
    pub invitee: String,
    /// `pending`, `accepted` or `rejected`.
    pub state: String,
    /// When it was sent.
    pub created_at: DateTimeWithTimeZone,
    /// The folder.
    pub vfolder: Uuid,
}

/// Relations of an invitation.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The folder.
    #[sea_orm(
        belongs_to = "super::vfolders::Entity",
        from = "Column::Vfolder",
        to = "super::vfolders::Column::Id",
        on_delete = "Cascade"
    )]
    Vfolder,
}

impl Related<super::vfolders::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Vfolder.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
