//! SeaORM entities of the Backend.AI manager: the tables described in the API
//! contract's State section. Only models live here; queries live in the manager.

pub mod agents;
pub mod kernels;
pub mod keypairs;
pub mod session_events;
pub mod vfolder_attachment;
pub mod vfolders;

pub mod prelude {
    //! The entities under their table names.
    pub use super::agents::Entity as Agents;
    pub use super::kernels::Entity as Kernels;
    pub use super::keypairs::Entity as Keypairs;
    pub use super::session_events::Entity as SessionEvents;
    pub use super::vfolder_attachment::Entity as VfolderAttachment;
    pub use super::vfolders::Entity as Vfolders;
}
