//! coffer-operator: syncs environments of coffer-server into Kubernetes Secrets.
//!
//! The custom resources ([`crd`]) and their manifests ([`crds_yaml`]); the two controllers,
//! [`project`] and [`environment`]; what they share ([`context`], [`credentials`],
//! [`source`] with [`push`], [`conditions`]); and the process around them ([`run`]: leader election, probes, metrics).

pub mod conditions;
pub mod config;
pub mod context;
pub mod crd;
pub mod credentials;
pub mod environment;
pub mod kube_client;
pub mod lease;
pub mod metrics;
pub mod project;
pub mod push;
pub mod run;
pub mod source;
pub mod status;
pub mod stores;

pub use config::Config;
pub use run::Operator;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const GENERATED_HEADER: &str =
    "# Generated from operator/src/crd by `coffer-operator crd`: do not edit.\n";

/// One CRD as a YAML document, as committed in `crds/<kind>.yaml`.
#[expect(
    clippy::expect_used,
    reason = "a CRD is strings, numbers and maps with string keys: always representable in YAML"
)]
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_norway::to_string(crd).expect("a CRD serialises to YAML");
    format!("{GENERATED_HEADER}{yaml}")
}

/// Every CRD of the operator as one multi-document YAML stream, for `kubectl apply -f -`.
pub fn crds_yaml() -> String {
    crd::crds()
        .iter()
        .map(|crd| format!("---\n{}", crd_yaml(crd)))
        .collect()
}
