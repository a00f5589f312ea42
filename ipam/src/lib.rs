//! Calico-compatible IPAM (the allocation library arrives with its issue).
