//! Lab for issue 13's memory figure: the resident size of a process that holds only the
//! BGP speaker (no etcd client, TLS, policy or kernel programming), with the routes the
//! bench's agents learn. Three senders on 10.99.0.1-3 each originate `n` /26 blocks; the
//! receiver on 10.99.0.10 peers with them (iBGP, one session each) and prints its
//! `VmRSS`, `RssAnon` and `RssFile` once every route is learned, again 12 s later, and
//! after returning free heap memory as calico-node does after a burst;
//! with a third number the receiver also originates that many blocks, sent to every
//! sender.
//! The addresses go on the loopback of a namespace of its own (loopback addresses are not
//! valid next hops).
//!
//! ```text
//! cargo build --release -p calico-bgp --example rss_floor
//! ip netns add rssfloor; ip -n rssfloor link set lo up
//! for i in 1 2 3 10; do ip -n rssfloor addr add 10.99.0.$i/32 dev lo; done
//! B="ip netns exec rssfloor target/release/examples/rss_floor"
//! for i in 1 2 3; do $B send $i 10000 & done; $B recv 3 10000 [10000]; kill %1 %2 %3
//! ip netns delete rssfloor
//! ```
//!
//! Nothing is written to the kernel's routes.

use calico_bgp::{PeerConfig, Route, Speaker, SpeakerConfig};
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const PORT: u16 = 11790;
const AS: u32 = 64512;
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default()
}

fn rss() -> String {
    format!(
        "VmRSS {} kB (anon {} kB, file {} kB)",
        status("VmRSS:"),
        status("RssAnon:"),
        status("RssFile:")
    )
}

/// `n` /26 blocks of node `i`: from 10.(100 + 16i).0.0 on (16 /16s per node).
fn blocks(i: u8, n: u32) -> Result<Vec<Route>, ipnet::PrefixLenError> {
    let base = u32::from(Ipv4Addr::new(10, 100 + 16 * i, 0, 0));
    (0..n)
        .map(|j| {
            let net = Ipv4Net::new(Ipv4Addr::from(base + j * 64), 26)?;
            Ok(Route::new(IpNet::V4(net)))
        })
        .collect()
}

fn peer(name: &str, addr: Ipv4Addr, passive: bool, source: Option<Ipv4Addr>) -> PeerConfig {
    let mut p = PeerConfig::new(name, IpAddr::V4(addr), AS);
    p.port = PORT;
    p.passive = passive;
    p.source = source.map(IpAddr::V4);
    p.connect_delay = Duration::from_millis(10);
    p.connect_retry = Duration::from_secs(1);
    p.refused_retry = Some(Duration::from_millis(100));
    p
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("send") => {
            let i: u8 = args.get(2).ok_or("send <i> <n>")?.parse()?;
            let n: u32 = args.get(3).ok_or("send <i> <n>")?.parse()?;
            let me = Ipv4Addr::new(10, 99, 0, i);
            rt.block_on(async move {
                let cfg = SpeakerConfig {
                    router_id: me,
                    local_as: AS,
                    listen: Some(SocketAddr::new(IpAddr::V4(me), PORT)),
                    cluster_id: None,
                    graceful_restart: None,
                    restarting: false,
                };
                let (speaker, _events) = Speaker::start(cfg).await?;
                speaker.set_local_routes(blocks(i, n)?);
                speaker.set_peers(vec![peer("receiver", RECEIVER, true, None)]);
                std::future::pending::<()>().await;
                Ok::<(), Box<dyn std::error::Error>>(())
            })?;
        }
        Some("recv") => {
            let senders: u8 = args.get(2).ok_or("recv <senders> <n> [own]")?.parse()?;
            let n: usize = args.get(3).ok_or("recv <senders> <n> [own]")?.parse()?;
            // Blocks of its own, exported to every sender (as each bench agent has).
            let own: u32 = args.get(4).map_or(Ok(0), |v| v.parse())?;
            println!("start: {}", rss());
            rt.block_on(async move {
                let cfg = SpeakerConfig {
                    router_id: RECEIVER,
                    local_as: AS,
                    listen: None,
                    cluster_id: None,
                    graceful_restart: None,
                    restarting: false,
                };
                let (speaker, mut events) = Speaker::start(cfg).await?;
                speaker.set_local_routes(blocks(0, own)?);
                speaker.set_peers(
                    (1..=senders)
                        .map(|i| {
                            peer(
                                &format!("s{i}"),
                                Ipv4Addr::new(10, 99, 0, i),
                                false,
                                Some(RECEIVER),
                            )
                        })
                        .collect(),
                );
                let want = usize::from(senders) * n;
                let t0 = Instant::now();
                while speaker.learned().len() < want {
                    tokio::select! {
                        _ = events.recv() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    if t0.elapsed() > Duration::from_secs(60) {
                        return Err(
                            format!("only {} of {want} learned", speaker.learned().len()).into(),
                        );
                    }
                }
                println!(
                    "{} routes learned after {:?}: {}",
                    want,
                    t0.elapsed(),
                    rss()
                );
                let until = Instant::now() + Duration::from_secs(12);
                while Instant::now() < until {
                    tokio::select! {
                        _ = events.recv() => {}
                        _ = tokio::time::sleep_until(until.into()) => {}
                    }
                }
                println!("12 s later: {}", rss());
                // What the agent does once a burst is over (after the RIB's repacking).
                calico_malloc::release_free_memory();
                println!("free memory returned: {}", rss());
                Ok::<(), Box<dyn std::error::Error>>(())
            })?;
        }
        _ => return Err("usage: rss_floor send <i> <n> | recv <senders> <n> [own]".into()),
    }
    Ok(())
}
