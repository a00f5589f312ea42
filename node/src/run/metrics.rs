//! The agent's Prometheus metrics (`calico_node_*`), served in the Prometheus text format on
//! an optional TCP port (`CALICO_NODE_METRICS_PORT`).
//!
//! - `calico_node_requests_total{service,outcome}` and
//!   `calico_node_request_duration_seconds{service}`: the plugins' requests per service
//!   (`etcd`, `link`, `netfilter`, `health`), from the request read to the reply written;
//! - `calico_node_requests_in_flight{service}`;
//! - `calico_node_connections_total{outcome}`: accepted, or refused (not root);
//! - `calico_node_deferred_work_total{kind,outcome}` and
//!   `calico_node_deferred_work_duration_seconds{kind}`: the kernel work done after the
//!   plugins answered (`link`: a veth deleted; `netfilter`: a UDP conntrack flush; `close`:
//!   held nfnetlink sockets closed), and `calico_node_deferred_work_pending`;
//! - `calico_node_netfilter_sockets_held`;
//! - `calico_node_etcd_ready` (1 when the last etcd contact succeeded);
//! - `calico_node_cpu_seconds_total`: the agent's own CPU time (user and system), so what is
//!   moved into it is seen, not hidden;
//! - route distribution: `calico_node_bgp_peers{state}` (sessions by RFC 4271 state),
//!   `calico_node_bgp_routes_learned` (prefixes with a best path),
//!   `calico_node_bgp_peer_routes{peer,direction}` (routes received from and sent to each
//!   peer),
//!   `calico_node_bgp_routes_originated`, `calico_node_route_applies_total{outcome}` and
//!   `calico_node_route_apply_duration_seconds` (one kernel convergence), and
//!   `calico_node_routing_synced` (1 once the datastore and BGP have synced).

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Service {
    pub service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceOutcome {
    pub service: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcome {
    pub kind: &'static str,
    pub outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 50 µs to ~1.6 s, doubling: an etcd request through the agent is ~0.3 ms, a veth
/// deletion 10-20 ms.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric, cheap to clone (clones share the values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<ServiceOutcome, Counter>,
    pub request_seconds: Histograms<Service>,
    pub in_flight: Family<Service, Gauge>,
    pub connections: Family<Outcome, Counter>,
    pub deferred: Family<KindOutcome, Counter>,
    pub deferred_seconds: Histograms<Kind>,
    pub deferred_pending: Gauge,
    pub sockets_held: Gauge,
    pub etcd_ready: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    pub bgp_peers: Family<State, Gauge>,
    pub bgp_routes_learned: Gauge,
    pub bgp_peer_routes: Family<PeerDirection, Gauge>,
    pub bgp_routes_originated: Gauge,
    pub route_applies: Family<Outcome, Counter>,
    pub route_apply_seconds: Histogram,
    pub routing_synced: Gauge,
    pub policy_applies: Family<Outcome, Counter>,
    pub policy_apply_seconds: Histogram,
    pub policy_sync_lag_seconds: Histogram,
    pub policy_synced: Gauge,
    pub policy_local_endpoints: Gauge,
    pub policy_endpoints: Gauge,
    pub policy_active_policies: Gauge,
    pub policy_sets: Gauge,
    pub policy_rules: Gauge,
    pub policy_skipped_objects: Gauge,
    pub policy_status_files: Gauge,
    pub policy_applied_revision: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirection {
    pub peer: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("calico_node");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            connections: Family::default(),
            deferred: Family::default(),
            deferred_seconds: Family::new_with_constructor(latency_histogram),
            deferred_pending: Gauge::default(),
            sockets_held: Gauge::default(),
            etcd_ready: Gauge::default(),
            cpu_seconds: Counter::default(),
            bgp_peers: Family::default(),
            bgp_routes_learned: Gauge::default(),
            bgp_peer_routes: Family::default(),
            bgp_routes_originated: Gauge::default(),
            route_applies: Family::default(),
            route_apply_seconds: latency_histogram(),
            routing_synced: Gauge::default(),
            policy_applies: Family::default(),
            policy_apply_seconds: latency_histogram(),
            policy_sync_lag_seconds: latency_histogram(),
            policy_synced: Gauge::default(),
            policy_local_endpoints: Gauge::default(),
            policy_endpoints: Gauge::default(),
            policy_active_policies: Gauge::default(),
            policy_sets: Gauge::default(),
            policy_rules: Gauge::default(),
            policy_skipped_objects: Gauge::default(),
            policy_status_files: Gauge::default(),
            policy_applied_revision: Gauge::default(),
        };
        registry.register(
            "requests",
            "Requests of the plugins, by service and outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request read to its reply written, by service",
            m.request_seconds.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being served, by service",
            m.in_flight.clone(),
        );
        registry.register(
            "connections",
            "Connections to the socket, accepted or refused (not root)",
            m.connections.clone(),
        );
        registry.register(
            "deferred_work",
            "Kernel work done after the plugins answered, by kind and outcome",
            m.deferred.clone(),
        );
        registry.register(
            "deferred_work_duration_seconds",
            "Time the kernel took for one piece of deferred work, by kind",
            m.deferred_seconds.clone(),
        );
        registry.register(
            "deferred_work_pending",
            "Kernel work accepted and not done yet",
            m.deferred_pending.clone(),
        );
        registry.register(
            "netfilter_sockets_held",
            "nfnetlink sockets of finished calls held until the node is quiet",
            m.sockets_held.clone(),
        );
        registry.register(
            "etcd_ready",
            "1 when the last contact with etcd succeeded",
            m.etcd_ready.clone(),
        );
        // Brought up to the kernel's count at each scrape.
        registry.register(
            "cpu_seconds",
            "CPU time (user and system) the agent has used",
            m.cpu_seconds.clone(),
        );
        registry.register("bgp_peers", "BGP sessions by state", m.bgp_peers.clone());
        registry.register(
            "bgp_routes_learned",
            "Prefixes with a best path learned from BGP peers",
            m.bgp_routes_learned.clone(),
        );
        registry.register(
            "bgp_peer_routes",
            "Routes received from and sent to each BGP peer (by the speaker's name for it)",
            m.bgp_peer_routes.clone(),
        );
        registry.register(
            "bgp_routes_originated",
            "Prefixes this node announces",
            m.bgp_routes_originated.clone(),
        );
        registry.register(
            "route_applies",
            "Kernel route convergences, by outcome",
            m.route_applies.clone(),
        );
        registry.register(
            "route_apply_duration_seconds",
            "Time one kernel route convergence took",
            m.route_apply_seconds.clone(),
        );
        registry.register(
            "routing_synced",
            "1 once route distribution has the datastore (and, with BGP, its peers' routes)",
            m.routing_synced.clone(),
        );
        let policy_gauges: [(&str, &str, &Gauge); 9] = [
            (
                "policy_applied_revision",
                "The datastore revision the kernel's rules reflect (after each apply)",
                &m.policy_applied_revision,
            ),
            (
                "policy_synced",
                "1 once policy has been programmed after the datastore snapshot",
                &m.policy_synced,
            ),
            (
                "policy_local_endpoints",
                "Workload endpoints on this node with rules in the kernel",
                &m.policy_local_endpoints,
            ),
            (
                "policy_endpoints",
                "Workload endpoints known cluster-wide (they feed selector sets)",
                &m.policy_endpoints,
            ),
            (
                "policy_active_policies",
                "Policies and profiles that apply to an endpoint of this node",
                &m.policy_active_policies,
            ),
            (
                "policy_sets",
                "nftables sets the policy table holds",
                &m.policy_sets,
            ),
            (
                "policy_rules",
                "nftables rules the policy table holds",
                &m.policy_rules,
            ),
            (
                "policy_skipped_objects",
                "Datastore objects skipped as invalid",
                &m.policy_skipped_objects,
            ),
            (
                "policy_endpoint_status_files",
                "Endpoint status files written for the plugin",
                &m.policy_status_files,
            ),
        ];
        for (name, help, g) in policy_gauges {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "policy_applies",
            "Policy table transactions, by outcome",
            m.policy_applies.clone(),
        );
        registry.register(
            "policy_apply_duration_seconds",
            "Time one policy apply took: rendering what changed, planning, and the kernel transaction",
            m.policy_apply_seconds.clone(),
        );
        registry.register(
            "policy_sync_lag_seconds",
            "Time from a datastore change arriving to its rules being in the kernel",
            m.policy_sync_lag_seconds.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The text exposition, with the CPU time read now.
    pub fn render(&self) -> String {
        if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        {
            let seconds = |t: nix::sys::time::TimeVal| {
                t.tv_sec() as f64 + f64::from(i32::try_from(t.tv_usec()).unwrap_or(0)) / 1e6
            };
            let now = seconds(usage.user_time()) + seconds(usage.system_time());
            let more = now - self.cpu_seconds.get();
            if more > 0.0 {
                self.cpu_seconds.inc_by(more);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` (any path, in fact) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait a little rather than spin on it.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = metrics.render();
                async move {
                    hyper::Response::builder()
                        .header(
                            hyper::header::CONTENT_TYPE,
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        )
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&ServiceOutcome {
                service: "etcd",
                outcome: "ok",
            })
            .inc();
        m.request_seconds
            .get_or_create(&Service { service: "etcd" })
            .observe(0.0003);
        let text = m.render();
        assert!(
            text.contains("calico_node_requests_total{service=\"etcd\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("calico_node_request_duration_seconds_bucket"));
        assert!(text.contains("calico_node_cpu_seconds_total "));
    }
}
