//! Changes pushed by coffer-server's event stream: they reach a Secret within seconds whatever
//! its refresh interval; while the stream is refused or down the resources poll, and say so,
//! and they return to push when it is back.

use std::time::Duration;

use coffer_operator::crd::SyncMode;
use coffer_operator::metrics::StreamState;
use serde_json::json;

use crate::support::{ORG, Scene};

/// Far below any refresh interval here: only a push arrives this soon.
const PUSHED: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_change_reaches_a_secret_refreshed_hourly_within_seconds() {
    let Some(scene) = Scene::new(&[("A", "1")]).await else {
        return;
    };
    // staging's value refers to production's: a change there moves no revision of staging.
    scene
        .coffer
        .set("web", "staging", &[("S", "${production.A}")])
        .await;
    let operator = scene.start().await;
    let hourly = json!({ "refreshInterval": "1h" });
    scene
        .environment("prod", "production", hourly.clone())
        .await;
    scene.environment("stage", "staging", hourly).await;
    scene.wait_synced("prod", &[("A", "1")]).await;
    scene.wait_synced("stage", &[("S", "1")]).await;
    scene.wait_for_sync_mode("prod", SyncMode::Push).await;
    scene.wait_for_sync_mode("stage", SyncMode::Push).await;

    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene
        .wait_for_data_within("prod", &[("A", "2")], PUSHED)
        .await;
    scene
        .wait_for_data_within("stage", &[("S", "2")], PUSHED)
        .await;
    scene
        .wait_for_condition("stage", "Ready", "True", "Synced")
        .await;

    // One stream for the project, however many environments and resources read it.
    let metrics = &operator.metrics;
    assert_eq!(metrics.event_stream_count(StreamState::Connected), 1);
    assert_eq!(metrics.event_stream_count(StreamState::Disconnected), 0);
    assert!(metrics.events_received_count("secrets.changed") >= 2);
    assert!(metrics.events_received_count("resync") >= 1);
}

#[tokio::test]
async fn the_operator_polls_while_the_event_stream_is_refused_or_down_and_returns_to_push() {
    let Some(mut scene) = Scene::with_event_streams_max(&[("A", "1")], 1).await else {
        return;
    };
    scene.coffer.set("web", "staging", &[("S", "1")]).await;
    // The server's only stream is taken: the operator's is refused (503, Retry-After 10 s).
    let held = scene
        .coffer
        .admin()
        .project_events(ORG, "web", None, None)
        .await
        .unwrap();
    let operator = scene.start().await;
    scene
        .environment("fast", "production", json!({ "refreshInterval": "5s" }))
        .await;
    scene
        .environment("slow", "staging", json!({ "refreshInterval": "1h" }))
        .await;
    scene.wait_synced("fast", &[("A", "1")]).await;
    scene.wait_synced("slow", &[("S", "1")]).await;
    scene.wait_for_sync_mode("fast", SyncMode::Poll).await;
    scene.wait_for_sync_mode("slow", SyncMode::Poll).await;
    let metrics = &operator.metrics;
    assert_eq!(metrics.event_stream_count(StreamState::Disconnected), 1);
    assert!(metrics.event_stream_failure_count("ServerError") >= 1);

    // Polling still brings changes, at the refresh interval.
    scene.coffer.set("web", "production", &[("A", "2")]).await;
    scene.wait_for_data("fast", &[("A", "2")]).await;

    // The stream is served again: back to push.
    drop(held);
    scene.wait_for_sync_mode("slow", SyncMode::Push).await;
    scene.wait_for_sync_mode("fast", SyncMode::Push).await;
    scene.coffer.set("web", "staging", &[("S", "2")]).await;
    scene
        .wait_for_data_within("slow", &[("S", "2")], PUSHED)
        .await;

    // coffer-server goes away: polling (and the Secrets kept); back: push again.
    scene.coffer.stop().await;
    scene.wait_for_sync_mode("slow", SyncMode::Poll).await;
    assert_eq!(scene.data("slow").await.unwrap()["S"], "2");
    scene.coffer.resume().await;
    scene.wait_for_sync_mode("slow", SyncMode::Push).await;
    scene.coffer.set("web", "staging", &[("S", "3")]).await;
    scene
        .wait_for_data_within("slow", &[("S", "3")], PUSHED)
        .await;
    assert!(metrics.event_stream_count(StreamState::Connected) == 1);
}
