//! Services: `<name>` (headless, per-pod DNS names), `<name>-master` and `<name>-replica`
//! (selecting the role label the agent sets on its pod).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgset_spec::ClusterSpec;
use pgset_spec::contract::{POSTGRES_PORT, labels, roles};

use crate::{label_map, object_meta};

/// Name of the PostgreSQL port on Services and the container.
pub const POSTGRES_PORT_NAME: &str = "postgres";

fn postgres_port() -> ServicePort {
    ServicePort {
        name: Some(POSTGRES_PORT_NAME.into()),
        port: i32::from(POSTGRES_PORT),
        target_port: Some(IntOrString::String(POSTGRES_PORT_NAME.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Headless Service `<name>` (the StatefulSet's `serviceName`): `clusterIP: None`, and
/// `publishNotReadyAddresses` so members resolve each other while they bootstrap.
pub fn headless(spec: &ClusterSpec) -> Service {
    Service {
        metadata: object_meta(spec, spec.headless_service_name()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(label_map(spec.selector_labels())),
            ports: Some(vec![postgres_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn role_service(spec: &ClusterSpec, name: String, role: &str) -> Service {
    let mut selector = spec.selector_labels();
    selector.push((labels::ROLE, role.to_string()));
    Service {
        metadata: object_meta(spec, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(label_map(selector)),
            ports: Some(vec![postgres_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Service `<name>-master`: the ready pod labelled `role=master`.
pub fn master(spec: &ClusterSpec) -> Service {
    role_service(spec, spec.master_service_name(), roles::MASTER)
}

/// Service `<name>-replica`: the ready pods labelled `role=replica`.
pub fn replica(spec: &ClusterSpec) -> Service {
    role_service(spec, spec.replica_service_name(), roles::REPLICA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statefulset::statefulset;
    use crate::testutil::named_spec;

    #[test]
    fn headless_service_publishes_not_ready_members_and_selects_the_pods() {
        let spec = named_spec("db", "prod");
        let svc = headless(&spec);
        assert_eq!(svc.metadata.name.as_deref(), Some("db"));
        assert_eq!(svc.metadata.namespace.as_deref(), Some("prod"));
        let s = svc.spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.publish_not_ready_addresses, Some(true));
        let sts = statefulset(&spec);
        let pod_labels = sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        let selector = s.selector.unwrap();
        assert!(!selector.is_empty());
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "pod template lacks {k}={v}");
        }
        let ports = s.ports.unwrap();
        assert_eq!(ports[0].port, 5432);
    }

    #[test]
    fn role_services_select_the_role_label_and_the_cluster() {
        let spec = named_spec("db", "prod");
        for (svc, name, role) in [
            (master(&spec), "db-master", "master"),
            (replica(&spec), "db-replica", "replica"),
        ] {
            assert_eq!(svc.metadata.name.as_deref(), Some(name));
            let s = svc.spec.unwrap();
            assert_eq!(s.cluster_ip, None);
            assert_eq!(
                s.publish_not_ready_addresses, None,
                "{name} must route to ready pods only"
            );
            let sel = s.selector.unwrap();
            assert_eq!(sel.get("role").map(String::as_str), Some(role));
            assert_eq!(
                sel.get("app.kubernetes.io/instance").map(String::as_str),
                Some("db")
            );
            assert_eq!(
                sel.get("app.kubernetes.io/name").map(String::as_str),
                Some("pgset")
            );
            assert_eq!(sel.len(), 3);
            let port = &s.ports.unwrap()[0];
            assert_eq!(port.port, 5432);
            assert_eq!(
                port.target_port,
                Some(IntOrString::String("postgres".into()))
            );
        }
    }
}
