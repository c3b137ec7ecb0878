
pub mod agent;
