//! TLS end to end: a scheduler, a backend and spawned session servers all serving HTTPS / WSS
//! with a throwaway CA, the public URL template in the lookup answer, plain clients refused, and
//! a certificate swapped on disk served to new connections after SIGHUP while an open `wss://`
//! connection keeps chatting.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth::{RoomConnection, RoomEvent, Tls};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::ServerFrame;
use berth_testkit::{Cluster, ClusterOptions, TlsFiles, eventually, signal, temp_dir};

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

fn port_of(url: &str) -> SocketAddr {
    let url = reqwest::Url::parse(url).unwrap();
    SocketAddr::new(
        url.host_str().unwrap().parse().unwrap(),
        url.port().unwrap(),
    )
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
        scheduler_args: vec![
            "--session-public-url".into(),
            "wss://{host}:{port}/ws?via={serverId}".into(),
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
            },
        )
        .await
        .unwrap();
    let found = backend.lookup_room(&bob, &created.room_id).await.unwrap();
    let port = port_of(&found.url).port();
    assert_eq!(
        found.url,
        format!("wss://127.0.0.1:{port}/ws?via={}", found.server_id),
        "the public URL template fills the lookup answer"
    );

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

    // Plain HTTP, plain WebSocket and a client without the CA are all refused.
    let plain = format!(
        "http://{}",
        cluster.backend_url.trim_start_matches("https://")
    );
    assert!(
        reqwest::get(format!("{plain}/healthz")).await.is_err(),
        "plain HTTP must not be answered"
    );
    let plain_ws = found.url.replacen("wss://", "ws://", 1);
    assert!(
        RoomConnection::connect(&plain_ws, &found.token)
            .await
            .is_err(),
        "plain ws:// must be refused"
    );
    let untrusting = berth::Backend::with_tls(&cluster.backend_url, &Tls::default());
    assert!(
        untrusting.login("carol").await.is_err(),
        "a client without the CA must refuse the certificate"
    );

    // Swap the certificate on disk and SIGHUP the session server: new connections get the new
    // one, the open connections go on.
    let session = port_of(&found.url);
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
