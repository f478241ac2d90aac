//! The three user-facing kinds seen through one trait, so reconcile, cleanup, status aggregation and
//! assignment are written once for Tracepoint, DynamicLog and BpftraceScript.
use std::fmt::Debug;

use kube::{Api, Client, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use sonde_api::{
    AssignedProbe, BpftraceScript, DynamicLog, ProbeConfig, ProbeOwner, ResourceStatus, Targeting,
    Tracepoint,
};

/// A Sonde custom resource that becomes a probe on nodes.
pub trait SondeResource:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Kind name: first segment of probe ids, `owner.kind`, and the `kind` metric label.
    const KIND: &'static str;
    /// Where [`Targeting::selector`] sits in this kind's spec, for messages.
    const SELECTOR_FIELD: &'static str;
    type Spec: Targeting;

    fn spec(&self) -> &Self::Spec;
    fn status(&self) -> Option<&ResourceStatus>;
    /// The spec as carried by every `AssignedProbe` of this resource.
    fn probe_config(&self) -> ProbeConfig;
    /// An Api scoped the way this kind is (namespaced kinds need the object's namespace).
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;

    /// Stable probe id, `<kind>/<namespace>/<name>` or `<kind>/<name>`.
    fn probe_id(&self) -> String {
        AssignedProbe::id_for(
            Self::KIND,
            self.meta().namespace.as_deref(),
            &self.name_any(),
        )
    }

    fn probe_owner(&self) -> ProbeOwner {
        let meta = self.meta();
        ProbeOwner {
            kind: Self::KIND.to_owned(),
            namespace: meta.namespace.clone(),
            name: self.name_any(),
            uid: meta.uid.clone().unwrap_or_default(),
            generation: meta.generation.unwrap_or_default(),
        }
    }
}

macro_rules! namespaced_kind {
    ($kind:ty, $spec:ty, $variant:ident) => {
        impl SondeResource for $kind {
            const KIND: &'static str = stringify!($variant);
            const SELECTOR_FIELD: &'static str = "spec.selector";
            type Spec = $spec;
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn status(&self) -> Option<&ResourceStatus> {
                self.status.as_ref()
            }
            fn probe_config(&self) -> ProbeConfig {
                ProbeConfig::$variant(self.spec.clone())
            }
            fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
                match namespace {
                    Some(ns) => Api::namespaced(client, ns),
                    None => Api::all(client),
                }
            }
        }
    };
}

namespaced_kind!(Tracepoint, sonde_api::TracepointSpec, Tracepoint);
namespaced_kind!(DynamicLog, sonde_api::DynamicLogSpec, DynamicLog);

impl SondeResource for BpftraceScript {
    const KIND: &'static str = "BpftraceScript";
    const SELECTOR_FIELD: &'static str = "spec.pods.selector";
    type Spec = sonde_api::BpftraceScriptSpec;
    fn spec(&self) -> &Self::Spec {
        &self.spec
    }
    fn status(&self) -> Option<&ResourceStatus> {
        self.status.as_ref()
    }
    fn probe_config(&self) -> ProbeConfig {
        ProbeConfig::BpftraceScript(self.spec.clone())
    }
    fn api(client: Client, _namespace: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
}

/// Splits a probe id into (namespace, name) if it belongs to kind `K`.
pub fn parse_probe_id<K: SondeResource>(id: &str) -> Option<(Option<&str>, &str)> {
    let rest = id.strip_prefix(K::KIND)?.strip_prefix('/')?;
    match rest.split_once('/') {
        Some((ns, name)) => Some((Some(ns), name)),
        None => Some((None, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_parse_back_to_namespace_and_name() {
        let id = AssignedProbe::id_for("Tracepoint", Some("shop"), "http");
        assert_eq!(
            parse_probe_id::<Tracepoint>(&id),
            Some((Some("shop"), "http"))
        );
        assert_eq!(parse_probe_id::<DynamicLog>(&id), None);
        let id = AssignedProbe::id_for("BpftraceScript", None, "opens");
        assert_eq!(parse_probe_id::<BpftraceScript>(&id), Some((None, "opens")));
        assert_eq!(
            parse_probe_id::<BpftraceScript>("BpftraceScriptX/opens"),
            None
        );
    }
}
