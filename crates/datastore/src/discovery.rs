//! `etcd_discovery_srv`: the etcd endpoints from DNS SRV records, as libcalico-go's etcdv3
//! backend finds them (`srv.GetClient("etcd-client", domain, "")` of etcd's client
//! package): `_etcd-client-ssl._tcp.<domain>` gives `https://` endpoints, then
//! `_etcd-client._tcp.<domain>` gives `http://` ones; it fails only when both lookups fail.
//!
//! The lookups use the system's resolver configuration (`/etc/resolv.conf`), as Go's
//! resolver does. Two deliberate differences: a target's trailing dot is dropped (Go keeps
//! `host.:port`, which names the same host but not the name a certificate carries), and
//! records are ordered by priority, then by descending weight, then by name, where Go
//! shuffles equal priorities by weight.

use crate::error::EtcdError;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

/// One SRV answer, as used to build an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host, as the record names it (trailing dot included).
    pub target: String,
}

/// The endpoints for the answers of both lookups (`ssl`: the `_etcd-client-ssl` ones), as
/// `https://host:port` then `http://host:port`, each in priority order.
pub fn endpoints_from(ssl: &[SrvTarget], plain: &[SrvTarget]) -> Vec<String> {
    let urls = |scheme: &str, records: &[SrvTarget]| {
        let mut sorted = records.to_vec();
        sorted.sort_by(|a, b| {
            (a.priority, std::cmp::Reverse(a.weight), &a.target).cmp(&(
                b.priority,
                std::cmp::Reverse(b.weight),
                &b.target,
            ))
        });
        sorted
            .into_iter()
            .map(|r| {
                let host = r.target.trim_end_matches('.');
                // An IPv6 literal needs brackets, as Go's net.JoinHostPort adds them.
                if host.contains(':') {
                    format!("{scheme}://[{host}]:{}", r.port)
                } else {
                    format!("{scheme}://{host}:{}", r.port)
                }
            })
            .collect::<Vec<_>>()
    };
    let mut all = urls("https", ssl);
    all.extend(urls("http", plain));
    all
}

/// Looks both services up under `domain` on `runtime` and returns the endpoints. Errors
/// are [`EtcdError::Unreachable`] (a resolver that does not answer is as transient as an
/// etcd that does not), naming both lookups' failures as libcalico-go does.
pub fn discover(runtime: &tokio::runtime::Runtime, domain: &str) -> Result<Vec<String>, EtcdError> {
    let unreachable = |reason: String| EtcdError::Unreachable {
        endpoints: format!("SRV records of {domain}"),
        reason,
    };
    let lookups = runtime.block_on(async {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the resolver configuration: {e}"))?
            .build()
            .map_err(|e| format!("cannot start the resolver: {e}"))?;
        let lookup = |service: &'static str| {
            let name = format!("_{service}._tcp.{domain}");
            let resolver = &resolver;
            async move {
                match resolver.srv_lookup(name.as_str()).await {
                    Ok(found) => Ok(found
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SRV(srv) => Some(SrvTarget {
                                priority: srv.priority,
                                weight: srv.weight,
                                port: srv.port,
                                target: srv.target.to_string(),
                            }),
                            _ => None,
                        })
                        .collect::<Vec<_>>()),
                    Err(e) => Err(format!("lookup {name}: {e}")),
                }
            }
        };
        Ok::<_, String>(tokio::join!(
            lookup("etcd-client-ssl"),
            lookup("etcd-client")
        ))
    });
    let (ssl, plain) = lookups.map_err(unreachable)?;
    match (ssl, plain) {
        (Err(a), Err(b)) => Err(unreachable(format!(
            "failed to discover etcd endpoints through SRV discovery: dns lookup errors: {a} \
             and {b}"
        ))),
        (ssl, plain) => {
            let endpoints = endpoints_from(&ssl.unwrap_or_default(), &plain.unwrap_or_default());
            log::debug!("etcd endpoints from the SRV records of {domain}: {endpoints:?}");
            Ok(endpoints)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port,
            target: target.to_string(),
        }
    }

    /// Mirrors etcd client/pkg/srv `GetClient`: https from the `-ssl` service first, then
    /// http, each `host:port`.
    #[test]
    fn endpoints_are_https_then_http_in_priority_order() {
        let ssl = [
            srv(20, 0, 2379, "etcd-b.example.com."),
            srv(10, 5, 2379, "etcd-a.example.com."),
            srv(10, 50, 2381, "etcd-c.example.com."),
        ];
        let plain = [srv(0, 0, 2379, "etcd-plain.example.com.")];
        assert_eq!(
            endpoints_from(&ssl, &plain),
            [
                "https://etcd-c.example.com:2381",
                "https://etcd-a.example.com:2379",
                "https://etcd-b.example.com:2379",
                "http://etcd-plain.example.com:2379",
            ]
        );
        assert!(endpoints_from(&[], &[]).is_empty());
    }
}
