//! `calicoctl ipam show`: pool (and block) utilisation, or who holds one address.

use crate::error::{CmdError, CmdResult};
use crate::gofmt;
use crate::resources::validate::{overlaps, parse_cidr};
use calico_datastore::KvStore;
use calico_datastore::model::{AllocationAttribute, AllocationBlock, IpPool, keys};
use calico_ipam::block;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const HEADERS: [&str; 5] = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"];

/// calicoctl's `ValidateIP`: the parsed address, or its message (printed on stdout).
pub fn parse_ip(s: &str) -> CmdResult<IpAddr> {
    s.parse().map_err(|_| {
        CmdError::Stdout(format!(
            "Error executing command: invalid IP address specified: {s}"
        ))
    })
}

fn row(kind: &str, cidr: &IpNet, in_use: f64, capacity: f64) -> Vec<String> {
    let pct = |n: f64| gofmt::f0(100.0 * n / capacity);
    vec![
        kind.to_string(),
        cidr.to_string(),
        gofmt::g5(capacity),
        format!("{} ({}%)", gofmt::g5(in_use), pct(in_use)),
        format!(
            "{} ({}%)",
            gofmt::g5(capacity - in_use),
            pct(capacity - in_use)
        ),
    ]
}

/// The table rows of `GetUtilization` + `showBlockUtilization`: one row per pool in the order
/// given, its blocks after it with `show_blocks`; blocks in no pool fall into a hidden
/// `0.0.0.0/0` group whose rows only `show_blocks` prints.
pub fn utilization_rows(
    pools: &[IpNet],
    blocks: &[AllocationBlock],
    show_blocks: bool,
) -> Vec<Vec<String>> {
    let orphans: IpNet = IpNet::V4(ipnet::Ipv4Net::default());
    let mut groups: Vec<(IpNet, Vec<&AllocationBlock>)> = pools
        .iter()
        .chain(std::iter::once(&orphans))
        .map(|p| (*p, Vec::new()))
        .collect();
    for b in blocks {
        let same_family = |p: &IpNet| {
            matches!(
                (p, &b.cidr),
                (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
            )
        };
        if let Some((_, members)) = groups
            .iter_mut()
            .find(|(p, _)| same_family(p) && overlaps(&b.cidr, p))
        {
            members.push(b);
        }
    }
    let mut rows = Vec::new();
    for (pool, members) in groups {
        let mut block_rows = Vec::new();
        let mut pool_in_use = 0.0;
        for b in members {
            let capacity = block::capacity(&b.cidr) as f64;
            let in_use = capacity - b.unallocated.len() as f64;
            block_rows.push(row("Block", &b.cidr, in_use, capacity));
            pool_in_use += in_use;
        }
        if pool.prefix_len() > 0 {
            let bits = i32::from(pool.max_prefix_len() - pool.prefix_len());
            rows.push(row("IP Pool", &pool, pool_in_use, 2f64.powi(bits)));
        }
        if show_blocks {
            rows.extend(block_rows);
        }
    }
    rows
}

/// `ipam show [--show-blocks]`.
pub fn utilization(
    store: &dyn KvStore,
    show_blocks: bool,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    let got = store.read(&[
        calico_datastore::Read::Prefix(keys::resources_prefix("ippools")),
        calico_datastore::Read::Prefix("/calico/ipam/v2/assignment/".into()),
    ])?;
    let mut got = got.into_iter();
    let pools: Vec<IpNet> = got
        .next()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| IpPool::from_kv(kv).ok())
        .filter_map(|p| parse_cidr(&p.spec.cidr).map(|(_, n)| n))
        .collect();
    let blocks = super::sound_blocks(&got.next().unwrap_or_default());
    let rows = utilization_rows(&pools, &blocks, show_blocks);
    out.write_all(gofmt::box_table(&HEADERS, &rows).as_bytes())?;
    Ok(())
}

/// The lines `ipam show --ip` prints for an allocation's attributes (3.32 form).
pub fn ip_in_use_lines(ip: IpAddr, attr: Option<&AllocationAttribute>) -> String {
    let mut s = format!("IP {ip} is in use\n");
    match attr.and_then(|a| a.handle_id.as_deref()) {
        Some(h) => s.push_str(&format!("Handle ID: {h}\n")),
        None => s.push_str("Handle ID: <none>\n"),
    }
    let section = |title: &str, m: Option<&BTreeMap<String, String>>| {
        let m = m.filter(|m| !m.is_empty())?;
        let mut t = format!("{title}:\n");
        for (k, v) in m {
            t.push_str(&format!("  {k}: {v}\n"));
        }
        Some(t)
    };
    match section(
        "Active Owner Attributes",
        attr.and_then(|a| a.secondary.as_ref()),
    ) {
        Some(t) => s.push_str(&t),
        None => s.push_str("No Active Owner attributes defined\n"),
    }
    if let Some(t) = section(
        "Alternate Owner Attributes",
        attr.and_then(|a| a.alternate_owner_attrs.as_ref()),
    ) {
        s.push_str(&t);
    }
    s
}

/// `ipam show --ip=<addr>`: the block is found through the enabled pool holding the address,
/// as `GetAssignmentAttributes` does.
pub fn show_ip(store: &dyn KvStore, ip_text: &str, out: &mut dyn std::io::Write) -> CmdResult {
    let ip = parse_ip(ip_text)?;
    let not_assigned = format!("{ip} is not assigned\n");
    let pools = store.list(&keys::resources_prefix("ippools"))?;
    let pool = pools
        .iter()
        .filter_map(|kv| IpPool::from_kv(kv).ok())
        .map(|p| p.spec.with_defaults())
        .filter(|s| !s.disabled)
        .filter_map(|s| parse_cidr(&s.cidr).map(|(_, n)| (n, s.block_size)))
        .find(|(n, _)| n.contains(&ip));
    let Some((_, block_size)) = pool else {
        out.write_all(not_assigned.as_bytes())?;
        return Ok(());
    };
    let Ok(block_cidr) = IpNet::new(ip, block_size).map(|n| n.trunc()) else {
        out.write_all(not_assigned.as_bytes())?;
        return Ok(());
    };
    let Some(b) = store
        .get(&keys::block(&block_cidr))?
        .and_then(|kv| super::sound_blocks(std::slice::from_ref(&kv)).pop())
    else {
        out.write_all(not_assigned.as_bytes())?;
        return Ok(());
    };
    let idx = block::ordinal(&b.cidr, ip).and_then(|o| b.allocations.get(o).copied().flatten());
    let text = match idx {
        None => not_assigned,
        Some(i) => ip_in_use_lines(ip, b.attributes.as_ref().and_then(|a| a.get(i))),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// `ipam show --show-borrowed`: allocations whose `node` is not the block's affine host.
pub fn borrowed_rows(blocks: &[AllocationBlock]) -> (Vec<Vec<String>>, usize) {
    let mut rows = Vec::new();
    let mut unclassified = 0;
    for b in blocks {
        let owner = b
            .affinity
            .as_deref()
            .map(|a| {
                let parts: Vec<&str> = a.split(':').collect();
                if parts.len() == 2 { parts[1] } else { parts[0] }.to_string()
            })
            .unwrap_or_default();
        for (ord, idx) in b.allocations.iter().enumerate() {
            let Some(idx) = idx else { continue };
            let Some(attr) = b.attributes.as_ref().and_then(|a| a.get(*idx)) else {
                continue;
            };
            let Some(node) = attr.owner("node") else {
                unclassified += 1;
                continue;
            };
            if node == owner {
                continue;
            }
            let ns = attr.owner("namespace").unwrap_or_default();
            let (kind, to) = if let Some(vmi) = attr.owner("vmi-name") {
                ("vmi".to_string(), format!("{ns}/{vmi}"))
            } else if let Some(pod) = attr.owner("pod") {
                ("pod".to_string(), format!("{ns}/{pod}"))
            } else {
                (
                    attr.owner("type").unwrap_or_default().to_string(),
                    String::new(),
                )
            };
            rows.push(vec![
                block::address(&b.cidr, ord).to_string(),
                node.to_string(),
                b.cidr.to_string(),
                owner.clone(),
                kind,
                to,
            ]);
        }
    }
    (rows, unclassified)
}

/// `ipam show --show-borrowed`.
pub fn show_borrowed(store: &dyn KvStore, out: &mut dyn std::io::Write) -> CmdResult {
    let blocks = super::sound_blocks(&store.list("/calico/ipam/v2/assignment/")?);
    let (rows, unclassified) = borrowed_rows(&blocks);
    let headers = [
        "IP",
        "BORROWING-NODE",
        "BLOCK",
        "BLOCK OWNER",
        "TYPE",
        "ALLOCATED-TO",
    ];
    out.write_all(gofmt::box_table(&headers, &rows).as_bytes())?;
    if unclassified != 0 {
        writeln!(
            out,
            "\nNote: found {unclassified} IP allocations without an explicit node association. Unable to determine if they are borrowed."
        )?;
    }
    Ok(())
}

/// `ipam show --show-configuration` (`showConfiguration`): `GetIPAMConfig`, so a missing
/// config is created with Calico's defaults, as Calico 3.32 does. The persistence is shown
/// as its value, where Go prints a pointer.
pub fn show_configuration(store: &dyn KvStore, out: &mut dyn std::io::Write) -> CmdResult {
    let (_, c) = crate::ipam::configure::get_ipam_config(store)?;
    let rows = vec![
        vec!["StrictAffinity".to_string(), c.strict_affinity.to_string()],
        vec![
            "AutoAllocateBlocks".to_string(),
            c.auto_allocate_blocks.to_string(),
        ],
        vec![
            "MaxBlocksPerHost".to_string(),
            c.max_blocks_per_host.to_string(),
        ],
        vec![
            "KubeVirtVMAddressPersistence".to_string(),
            format!(
                "{:?}",
                c.kubevirt_vm_address_persistence.unwrap_or_default()
            ),
        ],
    ];
    out.write_all(gofmt::box_table(&["PROPERTY", "VALUE"], &rows).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn block_with(cidr: &str, used: usize) -> AllocationBlock {
        let mut b = block::new_block(net(cidr), "n1", UNIX_EPOCH);
        for o in 0..used {
            b.allocations[o] = Some(0);
        }
        b.unallocated.drain(..used);
        b
    }

    #[test]
    fn pool_and_block_rows() {
        let pools = [net("10.244.0.0/16"), net("fd00::/48")];
        let blocks = [
            block_with("10.244.0.0/26", 3),
            block_with("10.9.0.0/26", 1),
            block_with("fd00::/122", 0),
        ];
        let rows = utilization_rows(&pools, &blocks, false);
        assert_eq!(
            rows,
            vec![
                vec![
                    "IP Pool",
                    "10.244.0.0/16",
                    "65536",
                    "3 (0%)",
                    "65533 (100%)"
                ],
                vec![
                    "IP Pool",
                    "fd00::/48",
                    "1.2089e+24",
                    "0 (0%)",
                    "1.2089e+24 (100%)"
                ],
            ]
        );
        let with_blocks = utilization_rows(&pools, &blocks, true);
        let kinds: Vec<(&str, &str)> = with_blocks
            .iter()
            .map(|r| (r[0].as_str(), r[1].as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("IP Pool", "10.244.0.0/16"),
                ("Block", "10.244.0.0/26"),
                ("IP Pool", "fd00::/48"),
                ("Block", "fd00::/122"),
                ("Block", "10.9.0.0/26"),
            ]
        );
        assert_eq!(with_blocks[1][3], "3 (5%)");
        assert_eq!(with_blocks[1][4], "61 (95%)");
    }

    #[test]
    fn borrowed() {
        let mut b = block_with("10.0.0.0/30", 2);
        b.attributes = Some(vec![AllocationAttribute::new(
            "h",
            [("node", "n2"), ("pod", "p"), ("namespace", "ns")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )]);
        let (rows, unclassified) = borrowed_rows(&[b]);
        assert_eq!(unclassified, 0);
        assert_eq!(
            rows[0],
            ["10.0.0.0", "n2", "10.0.0.0/30", "n1", "pod", "ns/p"]
        );
        assert_eq!(rows.len(), 2);
    }

    /// Mirrors show.go showConfiguration over ipam.go GetIPAMConfig: a missing config is
    /// created with the defaults, then shown.
    #[test]
    fn show_configuration_creates_the_default() {
        let store = calico_datastore::MemKv::new();
        let mut out = Vec::new();
        show_configuration(&store, &mut out).expect("shown");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "+------------------------------+-----------+\n\
             |           PROPERTY           |   VALUE   |\n\
             +------------------------------+-----------+\n\
             | StrictAffinity               | false     |\n\
             | AutoAllocateBlocks           | true      |\n\
             | MaxBlocksPerHost             |         0 |\n\
             | KubeVirtVMAddressPersistence | \"Enabled\" |\n\
             +------------------------------+-----------+\n"
        );
        assert_eq!(
            store.dump(),
            vec![(
                keys::IPAM_CONFIG.to_string(),
                r#"{"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#
                    .to_string()
            )]
        );
    }

    #[test]
    fn ip_lines() {
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let attrs: BTreeMap<String, String> = [("pod", "p"), ("namespace", "ns"), ("node", "n1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let a = AllocationAttribute::new("h1", attrs);
        assert_eq!(
            ip_in_use_lines(ip, Some(&a)),
            "IP 10.0.0.5 is in use\nHandle ID: h1\nActive Owner Attributes:\n  namespace: ns\n  node: n1\n  pod: p\n"
        );
        assert_eq!(
            ip_in_use_lines(ip, None),
            "IP 10.0.0.5 is in use\nHandle ID: <none>\nNo Active Owner attributes defined\n"
        );
        assert_eq!(
            parse_ip("10.0.0"),
            Err(CmdError::Stdout(
                "Error executing command: invalid IP address specified: 10.0.0".into()
            ))
        );
    }
}
