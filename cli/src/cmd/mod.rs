//! One module per command group.

pub mod doctor;
pub mod image;
pub mod policy;
pub mod run;
pub mod sandbox;
