//! The CNI protocol, as every binary of the suite speaks it. The base of the suite: it must
//! not import any other crate of it.
//!
//! - [`version`]: the spec versions 0.1.0 to 1.1.0 and what each allows;
//! - [`env`] and [`args`]: the `CNI_*` environment and `CNI_ARGS`;
//! - [`request`]: one call's validated config (`prevResult`, `runtimeConfig`, GC's list);
//! - [`result`]: one result model, written in any version;
//! - [`error`]: the error object and its codes;
//! - [`delegate`]: running another plugin (IPAM) from `CNI_PATH`;
//! - [`skel`]: the `main` of a plugin binary;
//! - [`logging`]: stderr plus the configured log file, never stdout.
//!
//! Owns the protocol only; must not import any other crate of the workspace (everything
//! else builds on it).

pub mod args;
pub mod delegate;
pub mod env;
pub mod error;
pub mod logging;
pub mod request;
pub mod result;
pub mod skel;
pub mod version;

pub use args::CniArgs;
pub use env::{Command, Environment};
pub use error::{CniError, ErrorCode};
pub use request::{Attachment, Request};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, run};
pub use version::CniVersion;
