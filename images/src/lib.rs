//! OCI images without a container engine: references, a registry client, a
//! content-addressed store, and safe, streaming unpacking into overlay-ready layers.
//!
//! Knows nothing of sandboxes: the runtime asks for layer directories and an image
//! config; the CLI drives pulls (in their own process, since they use threads).
#![forbid(unsafe_code)]

pub mod auth;
pub mod digest;
pub mod error;
pub mod import;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use error::{ImageError, Result};
pub use reference::Reference;
pub use store::{ImageRecord, Store};
