//! One module per command group.

pub mod doctor;
pub mod policy;
pub mod run;
