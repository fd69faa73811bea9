//! An HTTP destination's address — the sink's, and the dead-letter sink's: its URL, or the
//! Service its `ref` names resolved into one (as Knative resolves a Destination). A reference
//! that does not resolve — no such Service, no such port, several ports and none chosen, a
//! Service the operator may not read — is Degraded/SinkUnresolvable and nothing is applied:
//! the workers running keep the addresses they have.

use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::{Api, Client};
use pipewright_crds::event_consumer::ServiceReference;

use crate::error::{Error, Result};

/// Where a resource's sink (or dead-letter sink) delivers, as its spec says it.
#[derive(Clone, Copy, Debug)]
pub enum SinkAddress<'a> {
    Url(&'a str),
    Ref {
        service: &'a ServiceReference,
        path: Option<&'a str>,
        /// The field that holds the reference, for the Degraded message.
        field: &'static str,
    },
}

impl<'a> SinkAddress<'a> {
    /// A destination's address as its spec gives it: the Service its `ref` (+ `path`) names,
    /// held in `field`, else its `url`.
    pub fn of(
        url: Option<&'a str>,
        service_ref: Option<&'a ServiceReference>,
        path: Option<&'a str>,
        field: &'static str,
    ) -> SinkAddress<'a> {
        match service_ref {
            Some(service) => SinkAddress::Ref {
                service,
                path,
                field,
            },
            None => SinkAddress::Url(url.unwrap_or_default()),
        }
    }
}

/// A resource's HTTP destinations: as its spec says them (`T` = [`SinkAddress`]) or resolved
/// into URLs (`T` = `String`).
#[derive(Clone, Debug, PartialEq)]
pub struct Destinations<T> {
    /// The HTTP sink's.
    pub sink: Option<T>,
    /// The HTTP dead-letter sink's.
    pub dead_letter: Option<T>,
}

impl<T> Default for Destinations<T> {
    fn default() -> Self {
        Destinations {
            sink: None,
            dead_letter: None,
        }
    }
}

/// Resolves each destination of a resource in `namespace`.
pub async fn resolve_all(
    client: &Client,
    namespace: &str,
    cluster_domain: &str,
    destinations: Destinations<SinkAddress<'_>>,
) -> Result<Destinations<String>> {
    let mut resolved = Destinations::default();
    if let Some(sink) = destinations.sink {
        resolved.sink = Some(resolve(client, namespace, cluster_domain, sink).await?);
    }
    if let Some(dead_letter) = destinations.dead_letter {
        resolved.dead_letter = Some(resolve(client, namespace, cluster_domain, dead_letter).await?);
    }
    Ok(resolved)
}

/// The URL of a Service's port: `https` when the port is 443 or named `https` (or declares it
/// as its appProtocol), else `http`.
pub fn service_url(
    name: &str,
    namespace: &str,
    cluster_domain: &str,
    port: &ServicePort,
    path: Option<&str>,
) -> String {
    let https = port.port == 443
        || port.name.as_deref() == Some("https")
        || port.app_protocol.as_deref() == Some("https");
    let scheme = if https { "https" } else { "http" };
    format!(
        "{scheme}://{name}.{namespace}.svc.{cluster_domain}:{}{}",
        port.port,
        path.unwrap_or("/")
    )
}

/// The port of `service` a reference means: the one numbered `wanted`, or its only port.
pub fn port_of(
    service: &Service,
    wanted: Option<i32>,
) -> std::result::Result<&ServicePort, String> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let tcp = |p: &&ServicePort| p.protocol.as_deref().unwrap_or("TCP") == "TCP";
    match wanted {
        Some(n) => ports
            .iter()
            .filter(tcp)
            .find(|p| p.port == n)
            .ok_or_else(|| format!("has no TCP port {n}")),
        None => {
            let tcp_ports: Vec<&ServicePort> = ports.iter().filter(tcp).collect();
            match tcp_ports.as_slice() {
                [only] => Ok(only),
                [] => Err("has no TCP port".into()),
                several => Err(format!(
                    "has {} TCP ports ({}): set ref.port",
                    several.len(),
                    several
                        .iter()
                        .map(|p| p.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

/// The address `sink` delivers to, for a resource in `namespace`.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    cluster_domain: &str,
    sink: SinkAddress<'_>,
) -> Result<String> {
    let (service_ref, path, field) = match sink {
        SinkAddress::Url(url) => return Ok(url.to_owned()),
        SinkAddress::Ref {
            service,
            path,
            field,
        } => (service, path, field),
    };
    let ns = service_ref.namespace.as_deref().unwrap_or(namespace);
    let name = &service_ref.name;
    let unresolvable = |reason: String| Error::SinkUnresolvable {
        field,
        service: format!("{ns}/{name}"),
        reason,
    };
    let service = match Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(service)) => service,
        Ok(None) => return Err(unresolvable("does not exist".into())),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(unresolvable(
                "may not be read by the operator (its RBAC: with watchNamespace, Services of that namespace only)".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let port = port_of(&service, service_ref.port).map_err(unresolvable)?;
    Ok(service_url(name, ns, cluster_domain, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "hooks"}, "spec": {"ports": ports}}))
            .unwrap()
    }

    #[test]
    fn a_reference_resolves_to_the_services_name_in_the_cluster_domain_and_its_port() {
        let one = service(json!([{"port": 8080, "targetPort": 9000}]));
        let port = port_of(&one, None).unwrap();
        assert_eq!(
            service_url("hooks", "shop", "cluster.local", port, Some("/orders")),
            "http://hooks.shop.svc.cluster.local:8080/orders"
        );
        assert_eq!(
            service_url("hooks", "shop", "example.org", port, None),
            "http://hooks.shop.svc.example.org:8080/"
        );
        let tls = service(json!([{"name": "https", "port": 8443}]));
        assert_eq!(
            service_url(
                "hooks",
                "shop",
                "cluster.local",
                port_of(&tls, None).unwrap(),
                None
            ),
            "https://hooks.shop.svc.cluster.local:8443/"
        );
    }

    #[test]
    fn a_port_is_chosen_by_number_or_is_the_only_tcp_one() {
        let two = service(json!([
            {"name": "metrics", "port": 9090},
            {"name": "http", "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]));
        assert_eq!(port_of(&two, Some(80)).unwrap().port, 80);
        assert_eq!(
            port_of(&two, None).unwrap_err(),
            "has 2 TCP ports (9090, 80): set ref.port"
        );
        assert_eq!(port_of(&two, Some(53)).unwrap_err(), "has no TCP port 53");
        let udp = service(json!([{"port": 53, "protocol": "UDP"}]));
        assert_eq!(port_of(&udp, None).unwrap_err(), "has no TCP port");
    }
}
