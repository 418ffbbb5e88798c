//! coffer-operator's tests against a real Kubernetes control plane: one test binary, so one
//! control plane starts for all of them (see `tests/kube-testenv`), and a real coffer-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart;
mod crds;
mod credentials;
mod deploy;
mod dynamic;
mod mapping;
mod push;
mod rollout;
mod support;
mod sync;
