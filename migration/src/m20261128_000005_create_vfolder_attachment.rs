use sea_orm_migration::prelude::*;

use crate::m20261128_000003_create_kernels::Kernels;
use crate::m20261128_000004_create_vfolders::Vfolders;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(VfolderAttachment::Table)
                    .col(ColumnDef::new(VfolderAttachment::Vfolder).uuid().not_null())
                    .col(ColumnDef::new(VfolderAttachment::Kernel).uuid().not_null())
                    .primary_key(Index::create().col(VfolderAttachment::Vfolder).col(VfolderAttachment::Kernel))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_vfolder_attachment_vfolder")
                            .from(VfolderAttachment::Table, VfolderAttachment::Vfolder)
                            .to(Vfolders::Table, Vfolders::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_vfolder_attachment_kernel")
                            .from(VfolderAttachment::Table, VfolderAttachment::Kernel)
                            .to(Kernels::Table, Kernels::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_vfolder_attachment_kernel")
                    .table(VfolderAttachment::Table)
                    .col(VfolderAttachment::Kernel)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(VfolderAttachment::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum VfolderAttachment {
    Table,
    Vfolder,
    Kernel,
}
