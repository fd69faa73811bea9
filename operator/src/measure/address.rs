//! Host names in a resource's spec, resolved the way its worker pods resolve them.
//!
//! A pod's resolver searches its own namespace first (`<namespace>.svc.<cluster domain>`, for
//! any name with fewer than five dots), so `kafka:9092` in an EventConsumer of namespace `shop`
//! is the Service `kafka` of `shop`. The operator runs in a namespace of its own, where the same
//! name means another Service or nothing: it measures what the workers use by trying
//! `<host>.<namespace>.svc` first (its own search list completes the cluster domain) and the
//! name as written when that does not resolve. Outside a cluster (the operator run on a
//! workstation) the first lookup fails and nothing changes.

use std::time::Duration;

/// How long one lookup may take: a name that does not resolve is answered by the cluster DNS
/// in milliseconds; the measurement must not wait on a resolver that does not answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A pod's resolv.conf `ndots` (the kubelet writes 5): a name with at least this many dots is
/// looked up as written first.
const NDOTS: usize = 5;

/// The name a pod in `namespace` would look up first for `host`, or `None` when `host` is an
/// address or an absolute name (nothing is searched for those).
pub fn namespace_candidate(host: &str, namespace: &str) -> Option<String> {
    if host.is_empty()
        || namespace.is_empty()
        || host.ends_with('.')
        || host.starts_with('[')
        || host.starts_with('/')
        || host.parse::<std::net::IpAddr>().is_ok()
        || host.matches('.').count() >= NDOTS
    {
        return None;
    }
    Some(format!("{host}.{namespace}.svc"))
}

/// `host` as a pod in `namespace` resolves it: the namespace's Service of that name when one
/// resolves, else `host` unchanged.
pub async fn in_namespace(host: &str, port: u16, namespace: &str) -> String {
    let Some(candidate) = namespace_candidate(host, namespace) else {
        return host.to_owned();
    };
    let found = tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host((candidate.as_str(), port)),
    )
    .await
    .is_ok_and(|r| r.is_ok_and(|mut addrs| addrs.next().is_some()));
    if found { candidate } else { host.to_owned() }
}

/// Splits `host:port` (the port is required in bootstrap servers).
fn split_host_port(server: &str) -> Option<(&str, u16)> {
    let (host, port) = server.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// Kafka bootstrap servers (`host:port` each) as the workers in `namespace` reach them, joined
/// for `bootstrap.servers`.
pub async fn bootstrap_servers(servers: &[String], namespace: &str) -> String {
    let mut out = Vec::with_capacity(servers.len());
    for server in servers {
        match split_host_port(server) {
            Some((host, port)) => out.push(format!(
                "{}:{port}",
                in_namespace(host, port, namespace).await
            )),
            None => out.push(server.clone()),
        }
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_pod_would_search_its_namespace_for_get_the_namespace_first() {
        let c = |h| namespace_candidate(h, "shop");
        assert_eq!(c("kafka").as_deref(), Some("kafka.shop.svc"));
        assert_eq!(
            c("kafka-0.kafka").as_deref(),
            Some("kafka-0.kafka.shop.svc")
        );
        assert_eq!(
            c("my-cluster-kafka-bootstrap.kafka.svc").as_deref(),
            Some("my-cluster-kafka-bootstrap.kafka.svc.shop.svc")
        );
        assert_eq!(
            c("b-1.kafka.eu-west-1.amazonaws.com").as_deref(),
            Some("b-1.kafka.eu-west-1.amazonaws.com.shop.svc")
        );
        // Addresses, absolute names and names with five or more dots are not searched.
        assert_eq!(c("10.0.0.1"), None);
        assert_eq!(c("[::1]"), None);
        assert_eq!(c("::1"), None);
        assert_eq!(c("kafka.example.com."), None);
        assert_eq!(c("b-1.c-2.kafka.eu-west-1.amazonaws.com"), None);
        assert_eq!(c("/var/run/postgresql"), None);
        assert_eq!(namespace_candidate("kafka", ""), None);
    }

    #[tokio::test]
    async fn a_name_without_a_service_in_the_namespace_is_kept() {
        // `.invalid` never resolves (RFC 6761): the name stays as written.
        assert_eq!(
            bootstrap_servers(
                &["broker.invalid:9092".into(), "10.0.0.1:9093".into()],
                "shop"
            )
            .await,
            "broker.invalid:9092,10.0.0.1:9093"
        );
    }
}
