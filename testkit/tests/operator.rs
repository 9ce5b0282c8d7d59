//! What an operator sees: the backend's operator page and its fleet API behind the cluster
//! secret, and the Grafana dashboard in `deploy/grafana/`, whose every metric must exist.

use std::collections::BTreeSet;
use std::time::Duration;

use berth::{RoomConnection, RoomEvent};
use berth_protocol::frames::ServerFrame;
use berth_testkit::{Cluster, ClusterOptions, eventually_some};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_shows_the_fleet_behind_the_cluster_secret() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let ticket = backend
        .create_room(&alice, &Default::default())
        .await
        .unwrap();
    let (mut conn, _) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    for i in 0..3 {
        conn.send(&format!("m{i}"), None).await.unwrap();
    }
    let mut seen = 0;
    while seen < 3 {
        if let RoomEvent::Frame(ServerFrame::Message(_)) =
            conn.recv_timeout(Duration::from_secs(10)).await.unwrap()
        {
            seen += 1;
        }
    }

    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/operator", cluster.backend_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/operator.js") && !html.contains("<script>"),
        "no inline script"
    );
    let script = http
        .get(format!("{}/operator.js", cluster.backend_url))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);

    let url = format!("{}/api/operator/fleet", cluster.backend_url);
    for bearer in [
        None,
        Some("wrong"),
        Some(&cluster.secret[..cluster.secret.len() - 1]),
    ] {
        let mut req = http.get(&url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "bearer {bearer:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    // With the secret: the server hosting the room, the room with its member, and the
    // messages counted (read from the session server's metrics).
    let fleet: Value = eventually_some(Duration::from_secs(10), || {
        let (http, url, secret) = (http.clone(), url.clone(), cluster.secret.clone());
        async move {
            let fleet: Value = http
                .get(&url)
                .bearer_auth(&secret)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let counted = fleet["messagesIn"].as_u64()? >= 3;
            let member = fleet["rooms"].as_array()?.iter().any(|r| r["members"] == 1);
            (counted && member).then_some(fleet)
        }
    })
    .await;
    let servers = fleet["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{fleet:#}");
    let server = &servers[0];
    assert_eq!(server["state"], "ready");
    assert_eq!(server["connections"], 1);
    assert!(server["messagesIn"].as_u64().unwrap() >= 3);
    let room = &fleet["rooms"][0];
    assert_eq!(room["roomId"], ticket.room_id.as_str());
    assert_eq!(room["serverId"], server["id"]);
    assert!(fleet["atMs"].as_u64().unwrap() > 0);
    conn.close().await.unwrap();
    cluster.stop().await;
}

/// Every `berth_*` metric the dashboard queries is exported by the scheduler or a session server
/// (histograms by their `_bucket` series), so that a renamed metric fails here, not on a wall
/// screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/berth.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut wanted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            wanted.extend(metric_names(expr));
        }
    }
    assert!(
        wanted.len() >= 15,
        "the dashboard covers the fleet: {wanted:?}"
    );

    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.login("alice").await;
    let ticket = cluster
        .backend()
        .create_room(&alice, &Default::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut exported = String::new();
    exported += &http
        .get(format!("{}/metrics", cluster.scheduler_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // A session server's `/metrics` is on its operator listener, never its public port.
    let session_metrics = format!("{}/metrics", cluster.admin_url(&ticket.server_id).await);
    exported += &http
        .get(&session_metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let have: BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
    cluster.stop().await;
}

/// The `berth_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("berth_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
