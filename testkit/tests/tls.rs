//! TLS end to end: a scheduler, a backend and spawned session servers all serving HTTPS / WSS
//! with a throwaway CA, the public URL template in the lookup answer, SSE and the backend's HTTP
//! send over `https://`, the operator listener and its scrape over `https://`, plain clients
//! refused, and a certificate swapped on disk served to new connections after SIGHUP while an
//! open `wss://` connection keeps chatting. Tickets are single-use: each connection takes a
//! fresh one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth::{RoomConnection, RoomEvent, Tls};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::ServerFrame;
use berth_testkit::{
    Cluster, ClusterOptions, TlsFiles, eventually, eventually_some, signal, temp_dir,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A CA, and a certificate for 127.0.0.1 it signed.
struct Issued {
    ca: String,
    cert: String,
    key: String,
}

fn issue() -> Issued {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Issued {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Replaces `path` whole (write beside, rename), as certificate tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Whether a TLS client trusting only `ca` completes a handshake with `addr`.
async fn handshake_trusting(ca: &str, addr: SocketAddr) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.is_ok()
}

/// The next `message` frame's text, skipping presence.
async fn next_text(conn: &mut RoomConnection) -> String {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) => return m.text,
            RoomEvent::Frame(ServerFrame::Joined { .. } | ServerFrame::Left { .. }) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The address behind a `wss://localhost:port/…` or `https://127.0.0.1:port/…` URL.
fn addr_of(url: &str) -> SocketAddr {
    let url = reqwest::Url::parse(url).unwrap();
    let ip = match url.host_str().unwrap() {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip.parse().unwrap(),
    };
    SocketAddr::new(ip, url.port().unwrap())
}

/// An HTTP client trusting only what the cluster's processes trust.
fn https_client(files: &TlsFiles) -> reqwest::Client {
    let pem = std::fs::read(&files.ca).unwrap();
    let mut builder = reqwest::Client::builder().timeout(WAIT);
    for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().unwrap()
}

/// Reads `response` (an SSE stream) until its text holds `needle`.
async fn sse_until(response: &mut reqwest::Response, needle: &str) {
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(needle) {
            let chunk = response.chunk().await.unwrap().expect("the stream ended");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} on the SSE stream; saw {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_https_and_wss_and_reloads_its_certificate() {
    let dir = temp_dir("tls");
    let (first, second) = (issue(), issue());
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        // Both CAs from the start, so that the processes keep trusting each other across the swap.
        ca: dir.join("ca.pem"),
    };
    replace(&files.cert, &first.cert);
    replace(&files.key, &first.key);
    replace(&files.ca, &format!("{}{}", first.ca, second.ca));

    let cluster = Cluster::start(ClusterOptions {
        tls: Some(files.clone()),
        // Not the bound address (127.0.0.1): the name the certificate also carries.
        scheduler_args: vec![
            "--session-public-url".into(),
            "wss://localhost:{port}/ws".into(),
        ],
        ..ClusterOptions::default()
    })
    .await;
    assert!(cluster.backend_url.starts_with("https://"));

    // Create over HTTPS; the room's URL is the template, filled.
    let backend = cluster.backend();
    let alice = backend.login("alice").await.unwrap();
    let bob = backend.login("bob").await.unwrap();
    let created = backend
        .create_room(
            &alice,
            &CreateRoomRequest {
                name: Some("secure".into()),
                public: false,
                private: false,
            },
        )
        .await
        .unwrap();
    let found = backend.lookup_room(&bob, &created.room_id).await.unwrap();
    let port = addr_of(&found.url).port();
    assert_eq!(
        found.url,
        format!("wss://localhost:{port}/ws"),
        "the public URL template fills the lookup answer"
    );
    assert_eq!(found.sse_url, format!("https://localhost:{port}/sse"));

    // Chat over WSS, trusting the test CA.
    let tls = files.client_tls();
    let (mut a, _) = RoomConnection::connect_with(&created.url, &created.token, None, &tls)
        .await
        .unwrap();
    let (mut b, _) = RoomConnection::connect_with(&found.url, &found.token, None, &tls)
        .await
        .unwrap();
    a.send("over tls", None).await.unwrap();
    assert_eq!(next_text(&mut b).await, "over tls");
    assert_eq!(next_text(&mut a).await, "over tls");

    // SSE over HTTPS, with a ticket of its own; the backend's HTTP send reaches the session
    // server over HTTPS too (trusting the CA), and every member.
    let https = https_client(&files);
    let sse_ticket = backend.lookup_room(&bob, &created.room_id).await.unwrap();
    let mut sse = https
        .get(format!("{}?token={}", sse_ticket.sse_url, sse_ticket.token))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let sent = https
        .post(format!(
            "{}/api/rooms/{}/messages",
            cluster.backend_url, created.room_id
        ))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({ "text": "over https" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201, "{}", sent.text().await.unwrap());
    sse_until(&mut sse, "over https").await;
    assert_eq!(next_text(&mut b).await, "over https");
    assert_eq!(next_text(&mut a).await, "over https");
    drop(sse);

    // The operator listener serves HTTPS and says so; the backend scrapes it over HTTPS.
    let admin_url = cluster.admin_url(&found.server_id).await;
    assert!(admin_url.starts_with("https://"), "{admin_url}");
    let metrics = https
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("berth_session_messages_in_total")
    );
    let fleet_url = format!("{}/api/operator/fleet", cluster.backend_url);
    eventually_some(WAIT, || async {
        let fleet: Value = https
            .get(&fleet_url)
            .bearer_auth(&cluster.secret)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (fleet["messagesIn"].as_u64()? >= 1).then_some(())
    })
    .await;

    // Plain HTTP, plain WebSocket and a client without the CA are all refused.
    let plain = format!(
        "http://{}",
        cluster.backend_url.trim_start_matches("https://")
    );
    assert!(
        reqwest::get(format!("{plain}/healthz")).await.is_err(),
        "plain HTTP must not be answered"
    );
    // A fresh ticket, so that only the missing TLS can be why it is refused.
    let unused = backend.lookup_room(&bob, &created.room_id).await.unwrap();
    let plain_ws = unused.url.replacen("wss://", "ws://", 1);
    assert!(
        RoomConnection::connect(&plain_ws, &unused.token)
            .await
            .is_err(),
        "plain ws:// must be refused"
    );
    let untrusting = berth::Backend::with_tls(&cluster.backend_url, &Tls::default());
    assert!(
        untrusting.login("carol").await.is_err(),
        "a client without the CA must refuse the certificate"
    );

    // The stock bot signs in to the `https://` backend trusting the CA it is given (its
    // webhook listener answers only once it has signed in).
    let bot_dir = temp_dir("tls-bot");
    let bot_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _bot = tokio::process::Command::new(berth_testkit::bin_path("testkit-bot"))
        .env("BERTH_BOT_LISTEN", format!("127.0.0.1:{bot_port}"))
        .env("BERTH_BACKEND_URL", &cluster.backend_url)
        .env("BERTH_BOT_WEBHOOK_SECRET", "tls-bot-secret")
        .env("BERTH_DATA_DIR", &bot_dir)
        .env("BERTH_TLS_CA", &files.ca)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    eventually(WAIT, || {
        let probe = probe.clone();
        async move {
            let health = probe
                .get(format!("http://127.0.0.1:{bot_port}/healthz"))
                .send()
                .await;
            matches!(health, Ok(r) if r.status().is_success())
        }
    })
    .await;
    assert!(
        bot_dir.join("stockbot.credentials").exists(),
        "the bot has its account"
    );

    // Swap the certificate on disk and SIGHUP the session server: new connections get the new
    // one, the open connections go on.
    let session = addr_of(&found.url);
    assert!(handshake_trusting(&first.ca, session).await);
    assert!(!handshake_trusting(&second.ca, session).await);
    replace(&files.cert, &second.cert);
    replace(&files.key, &second.key);
    let pid = cluster
        .server(&found.server_id)
        .await
        .pid
        .expect("a spawned server has a pid");
    signal(pid, "HUP");
    eventually(WAIT, || handshake_trusting(&second.ca, session)).await;
    assert!(!handshake_trusting(&first.ca, session).await);

    b.send("after the swap", None).await.unwrap();
    assert_eq!(next_text(&mut a).await, "after the swap");
    assert_eq!(next_text(&mut b).await, "after the swap");

    // And a new member gets in through the new certificate.
    let again = backend.lookup_room(&bob, &created.room_id).await.unwrap();
    let (c, welcome) = RoomConnection::connect_with(&again.url, &again.token, None, &tls)
        .await
        .unwrap();
    assert!(welcome.history.iter().any(|m| m.text == "after the swap"));
    c.close().await.ok();

    cluster.stop().await;
    std::fs::remove_dir_all(dir).ok();
}
