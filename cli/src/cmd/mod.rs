//! One module per command group.

pub mod create;
pub mod doctor;
pub mod explain;
pub mod forward;
pub mod image;
pub mod inference;
pub mod live_policy;
pub mod logs;
pub mod policy;
pub mod policy_edit;
pub mod provider;
pub mod remote;
pub mod run;
pub mod sandbox;
pub mod serve;
pub mod serve_api;
pub mod serve_cfg;
pub mod ssh;
pub mod ssh_config;
pub mod status;
pub mod system;
pub mod term;
pub mod term_data;
pub mod term_view;
pub mod transfer;
