//! A virtual folder: storage owned by a keypair that sessions can mount.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// One row of `vfolders`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "vfolders")]
pub struct Model {
    /// The folder's id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The storage host holding it.
    pub host: String,
    /// Its name, unique per owner.
    pub name: String,
    /// Most files it may hold.
    pub max_files: i32,
    /// Most bytes it may hold.
    pub max_size: i64,
    /// Files it holds now.
    pub num_files: i32,
    /// Bytes it holds now.
    pub cur_size: i64,
    /// When it was created.
    pub created_at: DateTimeWithTimeZone,
    /// When a session last mounted it.
    pub last_used: Option<DateTimeWithTimeZone>,
    /// The owning keypair.
    pub belongs_to: String,
}

/// Relations of a virtual folder.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The owning keypair.
    #[sea_orm(
        belongs_to = "super::keypairs::Entity",
        from = "Column::BelongsTo",
        to = "super::keypairs::Column::AccessKey"
    )]
    Keypair,
}

impl Related<super::keypairs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Keypair.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
