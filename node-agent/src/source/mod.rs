//! Where desired probes come from: this node's NodeAssignment ([`kube`], cluster mode) or YAML files
//! given with `--manifests` ([`manifests`], standalone mode). Both hand the full desired set to the
//! probe manager, which applies the difference.
pub mod kube;
pub mod manifests;
