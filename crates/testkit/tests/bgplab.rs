//! Self-tests of the BGP interop lab (`testkit::bgplab`), as in the reference lab
//! (`/work/shared/reference/bgp.md` §5.2): three nodes, one route reflector and two clients of
//! the other implementations, each originating its node's /26. Every daemon's RIB and every
//! kernel must hold the other nodes' /26s, pods (addresses on `lo`) must reach each other,
//! and a prefix announced and withdrawn at runtime must come and go everywhere. Also
//! Calico's full-mesh BIRD configuration, on three nodes.
//!
//! Part of the normal suite: without the daemons they skip, or fail under `CI=true`,
//! naming the Debian packages to install.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use testkit::bgplab::calico::CalicoMeshNode;
use testkit::bgplab::{
    Bird, DEFAULT_ASN, Frr, GoBgp, Lab, Neighbor, Speaker, SpeakerConfig, SpeakerKind,
    wait_kernel_gateway_routes, wait_kernel_lacks, wait_kernel_routes,
};
use testkit::require;

/// Bound of every wait: sessions come up in ~1 s with the lab's timers (reference §5.5);
/// this leaves room for a machine busy with builds.
const WAIT: Duration = Duration::from_secs(30);

/// The speaker of `kind` on node `i` of `lab`: the reflector (`i == rr`) has every other node
/// as a client, a client has the reflector as its only neighbour. It originates its pod block.
fn start(lab: &Lab, kind: SpeakerKind, i: usize, rr: usize) -> Result<Box<dyn Speaker>> {
    let mut config = SpeakerConfig::new(Lab::ip(i), DEFAULT_ASN).originate(Lab::pod_block(i));
    if i == rr {
        for j in (0..lab.nodes.len()).filter(|j| *j != rr) {
            config = config.neighbor(Neighbor::new(Lab::ip(j), DEFAULT_ASN).rr_client(None));
        }
    } else {
        config = config.neighbor(Neighbor::new(Lab::ip(rr), DEFAULT_ASN));
    }
    let ns = lab.netns(i);
    Ok(match kind {
        SpeakerKind::Bird => Box::new(Bird::start(ns, config)?),
        SpeakerKind::GoBgp => Box::new(GoBgp::start(ns, config)?),
        SpeakerKind::Frr => Box::new(Frr::start(ns, config)?),
    })
}

/// Runs the three-node lab with `kinds[i]` on node `i` and node `rr` as the reflector.
fn reflector_lab(kinds: [SpeakerKind; 3], rr: usize) -> Result<()> {
    let lab = Lab::new(3)?;
    for i in 0..3 {
        lab.add_pod_address(i)?;
    }
    let t0 = Instant::now();
    let mut speakers = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        speakers.push(start(&lab, kind, i, rr).with_context(|| format!("starting {kind}"))?);
    }
    let started = t0.elapsed();
    for s in &speakers {
        s.wait_established(WAIT)?;
    }
    let established = t0.elapsed();
    let blocks: Vec<Ipv4Net> = (0..3).map(Lab::pod_block).collect();
    for s in &speakers {
        s.wait_rib_has(&blocks, WAIT)?;
    }
    for (i, s) in speakers.iter().enumerate() {
        let remote: Vec<(Ipv4Net, Ipv4Addr)> = (0..3)
            .filter(|j| *j != i)
            .map(|j| (Lab::pod_block(j), Lab::ip(j)))
            .collect();
        wait_kernel_routes(s.netns_name(), &remote, WAIT)
            .with_context(|| format!("{} on node {i}", s.kind()))?;
    }
    let converged = t0.elapsed();
    for from in 0..3 {
        for to in (0..3).filter(|to| *to != from) {
            assert!(
                lab.ping(from, Lab::pod_ip(from), Lab::pod_ip(to))?,
                "ping from pod {} to pod {}",
                Lab::pod_ip(from),
                Lab::pod_ip(to)
            );
        }
    }
    // Runtime announce and withdraw, from each speaker in turn.
    let t1 = Instant::now();
    for i in 0..3 {
        let extra: Ipv4Net = format!("198.19.{}.64/26", i + 1).parse()?;
        speakers[i].announce(extra)?;
        for j in (0..3).filter(|j| *j != i) {
            wait_kernel_routes(speakers[j].netns_name(), &[(extra, Lab::ip(i))], WAIT)
                .with_context(|| format!("{} announced {extra}", speakers[i].kind()))?;
        }
        speakers[i].withdraw(extra)?;
        for j in (0..3).filter(|j| *j != i) {
            wait_kernel_lacks(speakers[j].netns_name(), &[extra], WAIT)
                .with_context(|| format!("{} withdrew {extra}", speakers[i].kind()))?;
            assert!(!speakers[j].rib()?.contains(&extra));
        }
    }
    if std::env::var_os("BGPLAB_LOGS").is_some() {
        for s in &speakers {
            eprintln!("==== {} log:\n{}", s.kind(), s.log());
        }
    }
    eprintln!(
        "bgplab {kinds:?} rr={rr}: daemons started in {started:?}, sessions up at {established:?}, \
         kernels full at {converged:?}; announce+withdraw round trips for 3 origins {:?}",
        t1.elapsed()
    );
    Ok(())
}

#[test]
fn bird_reflects_between_gobgp_and_frr() -> Result<()> {
    require!(root; "ip", "busybox");
    if !testkit::bgplab::require_daemons() {
        return Ok(());
    }
    reflector_lab([SpeakerKind::Bird, SpeakerKind::GoBgp, SpeakerKind::Frr], 0)
}

#[test]
fn frr_reflects_between_bird_and_gobgp() -> Result<()> {
    require!(root; "ip", "busybox");
    if !testkit::bgplab::require_daemons() {
        return Ok(());
    }
    reflector_lab([SpeakerKind::Bird, SpeakerKind::GoBgp, SpeakerKind::Frr], 2)
}

#[test]
fn gobgp_reflects_between_bird_and_frr() -> Result<()> {
    require!(root; "ip", "busybox");
    if !testkit::bgplab::require_daemons() {
        return Ok(());
    }
    reflector_lab([SpeakerKind::Bird, SpeakerKind::GoBgp, SpeakerKind::Frr], 1)
}

/// With `install_routes` off, every RIB holds every block but no kernel gets a learned route;
/// and, graceful restart off, a killed client's block leaves the others' RIBs at once (the
/// session closes; with graceful restart the reflector would keep it as stale for 120 s).
#[test]
fn speakers_told_not_to_install_leave_the_kernel_alone() -> Result<()> {
    require!(root; "ip", "busybox");
    if !testkit::bgplab::require_daemons() {
        return Ok(());
    }
    let lab = Lab::new(3)?;
    let rr = SpeakerConfig::new(Lab::ip(0), DEFAULT_ASN)
        .originate(Lab::pod_block(0))
        .install_routes(false)
        .graceful_restart(false)
        .neighbor(Neighbor::new(Lab::ip(1), DEFAULT_ASN).rr_client(None))
        .neighbor(Neighbor::new(Lab::ip(2), DEFAULT_ASN).rr_client(None));
    let client = |i: usize| {
        SpeakerConfig::new(Lab::ip(i), DEFAULT_ASN)
            .originate(Lab::pod_block(i))
            .install_routes(false)
            .graceful_restart(false)
            .neighbor(Neighbor::new(Lab::ip(0), DEFAULT_ASN))
    };
    let mut speakers: Vec<Box<dyn Speaker>> = vec![
        Box::new(Bird::start(lab.netns(0), rr)?),
        Box::new(GoBgp::start(lab.netns(1), client(1))?),
        Box::new(Frr::start(lab.netns(2), client(2))?),
    ];
    let blocks: Vec<Ipv4Net> = (0..3).map(Lab::pod_block).collect();
    for s in &speakers {
        s.wait_rib_has(&blocks, WAIT)?;
    }
    let pods: Ipv4Net = "198.19.0.0/16".parse()?;
    for s in &speakers {
        let learned: Vec<_> = testkit::bgplab::kernel_routes_within(s.netns_name(), pods)?
            .into_iter()
            .filter(|r| !r.gateways.is_empty())
            .collect();
        assert!(learned.is_empty(), "{}: {learned:?}", s.kind());
    }
    assert_eq!(
        speakers[0].session(Lab::ip(2))?,
        testkit::bgplab::SessionState::Established
    );
    speakers[2].kill()?;
    for s in &speakers[..2] {
        testkit::bgplab::wait_for(WAIT, "FRR's block withdrawn", || {
            let rib = s.rib()?;
            Ok((!rib.contains(&Lab::pod_block(2)), format!("{rib:?}")))
        })?;
    }
    Ok(())
}

/// `n` /32s of node `i`'s scale range 198.19.(64(i+1)).0/18 (reference §5.2).
fn scale_prefixes(i: usize, n: usize) -> Vec<Ipv4Net> {
    let base = u32::from(Ipv4Addr::new(
        198,
        19,
        64 * u8::try_from(i + 1).unwrap_or(0),
        0,
    ));
    (0..n)
        .map(|k| Ipv4Net::from(Ipv4Addr::from(base + u32::try_from(k).unwrap_or(0))))
        .collect()
}

/// Bulk updates (one reconfigure, one vtysh file, one MRT injection) through a BIRD
/// reflector: each speaker announces 1000 /32s, every kernel gets the other 2000, then each
/// withdraws them and every kernel loses them.
#[test]
fn thousand_prefixes_per_speaker_come_and_go() -> Result<()> {
    require!(root; "ip", "busybox");
    if !testkit::bgplab::require_daemons() {
        return Ok(());
    }
    const N: usize = 1000;
    let scale: Ipv4Net = "198.19.64.0/18".parse()?;
    let scale = scale
        .supernet()
        .and_then(|s| s.supernet())
        .context("198.19.0.0/16")?;
    let lab = Lab::new(3)?;
    let kinds = [SpeakerKind::Bird, SpeakerKind::GoBgp, SpeakerKind::Frr];
    let mut speakers = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        speakers.push(start(&lab, kind, i, 0)?);
    }
    for s in &speakers {
        s.wait_established(WAIT)?;
    }
    // Own pod blocks are there too: 2 remote /26s per kernel.
    for s in &speakers {
        wait_kernel_gateway_routes(s.netns_name(), scale, 2, WAIT)?;
    }
    let mut timings = Vec::new();
    for i in 0..3 {
        let prefixes = scale_prefixes(i, N);
        let t = Instant::now();
        speakers[i].announce_many(&prefixes)?;
        let command = t.elapsed();
        for j in (0..3).filter(|j| *j != i) {
            wait_kernel_gateway_routes(speakers[j].netns_name(), scale, 2 + N, WAIT)
                .with_context(|| format!("{} announced {N}", speakers[i].kind()))?;
        }
        let announced = t.elapsed();
        speakers[i].withdraw_many(&prefixes)?;
        for j in (0..3).filter(|j| *j != i) {
            wait_kernel_gateway_routes(speakers[j].netns_name(), scale, 2, WAIT)
                .with_context(|| format!("{} withdrew {N}", speakers[i].kind()))?;
        }
        timings.push(format!(
            "{}: command {command:?}, both kernels full at {announced:?}, empty again at {:?}",
            speakers[i].kind(),
            t.elapsed()
        ));
    }
    eprintln!("bgplab {N} /32s via BIRD reflector: {}", timings.join("; "));
    Ok(())
}

/// Three BIRDs configured as Calico configures a full mesh: sessions come up although the
/// higher address of each pair is passive, each kernel gets the others' blocks via their node
/// and its own block as a blackhole, and a block added at runtime spreads.
#[test]
fn calico_mesh_bird_config_converges() -> Result<()> {
    require!(root; "ip", "busybox");
    if !testkit::bgplab::require_daemons() {
        return Ok(());
    }
    let lab = Lab::new(3)?;
    let mesh: Vec<Ipv4Addr> = (0..3).map(Lab::ip).collect();
    let t0 = Instant::now();
    let mut birds = Vec::new();
    for i in 0..3 {
        lab.add_pod_address(i)?;
        let mut node = CalicoMeshNode::new(Lab::ip(i), mesh.clone());
        node.local_blocks = vec![Lab::pod_block(i)];
        node.pools = vec!["198.19.0.0/16".parse()?];
        birds.push(Bird::start_calico(lab.netns(i), node)?);
    }
    for b in &birds {
        b.wait_established(WAIT)?;
    }
    let established = t0.elapsed();
    for (i, b) in birds.iter().enumerate() {
        let remote: Vec<(Ipv4Net, Ipv4Addr)> = (0..3)
            .filter(|j| *j != i)
            .map(|j| (Lab::pod_block(j), Lab::ip(j)))
            .collect();
        wait_kernel_routes(b.netns_name(), &remote, WAIT)?;
        let own = b
            .kernel_routes()?
            .into_iter()
            .find(|r| r.dst == Lab::pod_block(i))
            .context("own block in the kernel")?;
        assert_eq!(own.kind, "blackhole", "{own:?}");
    }
    let converged = t0.elapsed();
    assert!(lab.ping(0, Lab::pod_ip(0), Lab::pod_ip(2))?);
    let extra: Ipv4Net = "198.19.1.64/26".parse()?;
    birds[0].announce(extra)?;
    for b in &birds[1..] {
        wait_kernel_routes(b.netns_name(), &[(extra, Lab::ip(0))], WAIT)?;
    }
    birds[0].withdraw(extra)?;
    for b in &birds[1..] {
        wait_kernel_lacks(b.netns_name(), &[extra], WAIT)?;
    }
    if std::env::var_os("BGPLAB_LOGS").is_some() {
        for b in &birds {
            eprintln!("==== BIRD log:\n{}\n{}", b.log(), b.config_text()?);
        }
    }
    eprintln!("bgplab calico mesh: sessions up at {established:?}, kernels full at {converged:?}");
    Ok(())
}
