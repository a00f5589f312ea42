//! `calicoctl ipam release --ip=<addr>`.

use super::show::parse_ip;
use crate::error::{CmdError, CmdResult};
use calico_datastore::KvStore;
use calico_ipam::Ipam;

/// Releases one address with the IPAM library (its handle is decremented in the same
/// transaction). An address that is not allocated is an error, as in calicoctl.
pub fn release_ip(store: &dyn KvStore, ip_text: &str, out: &mut dyn std::io::Write) -> CmdResult {
    let ip = parse_ip(ip_text)?;
    let released = Ipam::new(store, "calicoctl")
        .release_ips(&[ip], None)
        .map_err(|e| CmdError::failed(format!("error: {e}")))?;
    if released.is_empty() {
        return Err(CmdError::failed(format!("IP address {ip} is not assigned")));
    }
    writeln!(out, "Successfully released IP address {ip}")?;
    Ok(())
}
