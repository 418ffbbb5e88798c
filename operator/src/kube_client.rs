//! The operator's Kubernetes client: kube's own, with every request counted in the metrics
//! (`coffer_operator_kube_requests_total`), so the load the operator puts on the API server
//! can be watched.

use std::sync::Arc;

use axum::http::{Method, Request};
use kube::client::{Body, ClientBuilder};
use tower::util::MapRequestLayer;

use crate::metrics::Metrics;

/// A client for `config` that counts its requests in `metrics`.
pub fn client(config: kube::Config, metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let count = MapRequestLayer::new(move |request: Request<Body>| {
        metrics.kube_request(verb(request.method(), request.uri().query()));
        request
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
}

/// The verb of a request, as Kubernetes names it (a list is a `get` here: telling it apart
/// needs the resource's scope).
fn verb(method: &Method, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_by_their_kubernetes_verb() {
        assert_eq!(
            verb(&Method::GET, Some("labelSelector=a&watch=true")),
            "watch"
        );
        assert_eq!(verb(&Method::GET, Some("limit=500")), "get");
        assert_eq!(verb(&Method::GET, None), "get");
        assert_eq!(verb(&Method::PATCH, Some("fieldManager=x")), "patch");
        assert_eq!(verb(&Method::POST, None), "create");
        assert_eq!(verb(&Method::PUT, None), "update");
        assert_eq!(verb(&Method::DELETE, None), "delete");
    }
}
