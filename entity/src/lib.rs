//! SeaORM entities of the Backend.AI manager: the tables described in the API
//! contract's State section. Only models live here; queries live in the manager.

pub mod agents;
pub mod kernels;
pub mod keypairs;
pub mod scheduler_fence;
pub mod session_events;
pub mod vfolder_attachment;
pub mod vfolder_invitations;
pub mod vfolder_permissions;
pub mod vfolders;

pub mod prelude {
    //! The entities under their table names.
    pub use super::agents::Entity as Agents;
    pub use super::kernels::Entity as Kernels;
    pub use super::keypairs::Entity as Keypairs;
    pub use super::session_events::Entity as SessionEvents;
    pub use super::vfolder_attachment::Entity as VfolderAttachment;
    pub use super::vfolder_invitations::Entity as VfolderInvitations;
    pub use super::vfolder_permissions::Entity as VfolderPermissions;
    pub use super::vfolders::Entity as Vfolders;
}
