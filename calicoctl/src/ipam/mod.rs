//! The `calicoctl ipam` commands: `show`, `configure`, `release --ip`, `check`.

pub mod check;
pub mod configure;
pub mod release;
pub mod show;
