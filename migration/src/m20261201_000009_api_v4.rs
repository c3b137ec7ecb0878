use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::m20261128_000001_create_keypairs::Keypairs;
use crate::m20261128_000004_create_vfolders::Vfolders;

/// API v4 (manager 1.4): user ids become strings (`user@example.com`), and virtual
/// folders are shared through permissions and invitations.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                db.execute_unprepared(
                    "ALTER TABLE keypairs ALTER COLUMN user_id TYPE varchar(256) USING user_id::varchar",
                )
                .await?;
            }
            // SQLite cannot change a column's type: a new column takes the values over. One
            // batch, so that every step runs on the same pooled connection (another one could
            // still hold the schema from before the new column).
            _ => {
                db.execute_unprepared(
                    "DROP INDEX IF EXISTS ix_keypairs_user_id; \
                     ALTER TABLE keypairs ADD COLUMN user_id_text varchar(256) NOT NULL DEFAULT ''; \
                     UPDATE keypairs SET user_id_text = CAST(user_id AS TEXT); \
                     ALTER TABLE keypairs DROP COLUMN user_id; \
                     ALTER TABLE keypairs RENAME COLUMN user_id_text TO user_id; \
                     CREATE INDEX ix_keypairs_user_id ON keypairs (user_id);",
                )
                .await?;
            }
        }
        manager
            .create_table(
                Table::create()
                    .table(VfolderPermissions::Table)
                    .col(ColumnDef::new(VfolderPermissions::Vfolder).uuid().not_null())
                    .col(ColumnDef::new(VfolderPermissions::AccessKey).string_len(20).not_null())
                    .col(ColumnDef::new(VfolderPermissions::Permission).string_len(2).not_null())
                    .primary_key(Index::create().col(VfolderPermissions::Vfolder).col(VfolderPermissions::AccessKey))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_vfolder_permissions_vfolder")
                            .from(VfolderPermissions::Table, VfolderPermissions::Vfolder)
                            .to(Vfolders::Table, Vfolders::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_vfolder_permissions_access_key")
                            .from(VfolderPermissions::Table, VfolderPermissions::AccessKey)
                            .to(Keypairs::Table, Keypairs::AccessKey)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_vfolder_permissions_access_key")
                    .table(VfolderPermissions::Table)
                    .col(VfolderPermissions::AccessKey)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(VfolderInvitations::Table)
                    .col(ColumnDef::new(VfolderInvitations::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(VfolderInvitations::Permission).string_len(2).not_null())
                    .col(ColumnDef::new(VfolderInvitations::Inviter).string_len(256).not_null())
                    .col(ColumnDef::new(VfolderInvitations::Invitee).string_len(256).not_null())
                    .col(ColumnDef::new(VfolderInvitations::State).string_len(10).not_null())
                    .col(ColumnDef::new(VfolderInvitations::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(VfolderInvitations::Vfolder).uuid().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_vfolder_invitations_vfolder")
                            .from(VfolderInvitations::Table, VfolderInvitations::Vfolder)
                            .to(Vfolders::Table, Vfolders::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_vfolder_invitations_invitee")
                    .table(VfolderInvitations::Table)
                    .col(VfolderInvitations::Invitee)
                    .col(VfolderInvitations::State)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(VfolderInvitations::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(VfolderPermissions::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum VfolderPermissions {
    Table,
    Vfolder,
    AccessKey,
    Permission,
}

#[derive(DeriveIden)]
enum VfolderInvitations {
    Table,
    Id,
    Permission,
    Inviter,
    Invitee,
    State,
    CreatedAt,
    Vfolder,
}
