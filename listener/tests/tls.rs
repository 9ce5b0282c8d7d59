//! The listener over TLS: requests served with the peer address, plain HTTP not answered, and
//! handshakes bounded in time, counted against the connection budget and kept off the accept
//! path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use berth_listener::{Limits, Listener};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A CA's PEM and an acceptor serving a certificate for 127.0.0.1 it signed.
fn acceptor() -> (String, tokio_rustls::TlsAcceptor) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `/peer` (the address the handler sees) over TLS with `limits`.
async fn start(limits: Limits) -> (SocketAddr, String, CancellationToken) {
    let (ca, tls) = acceptor();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let listener = Listener::new(tcp, Some(tls));
    assert!(listener.is_tls());
    let stop = CancellationToken::new();
    tokio::spawn(berth_listener::serve(listener, app, limits, stop.clone()));
    (addr, ca, stop)
}

fn client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        // One connection per request, so that each one needs a slot of its own.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn limits(max_connections: usize, header_read_timeout: Duration) -> Limits {
    Limits {
        max_connections,
        header_read_timeout,
        ..Limits::default()
    }
}

#[tokio::test]
async fn serves_https_with_the_peer_address_and_not_plain_http() {
    let (addr, ca, stop) = start(Limits::default()).await;
    let answer = client(&ca)
        .get(format!("https://{addr}/peer"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let peer: SocketAddr = answer.text().await.unwrap().parse().unwrap();
    assert!(peer.ip().is_loopback());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/"), "plain HTTP was answered");
    stop.cancel();
}

#[tokio::test]
async fn a_silent_client_holds_its_slot_only_until_the_handshake_timeout() {
    let timeout = Duration::from_millis(400);
    let (addr, ca, stop) = start(limits(1, timeout)).await;
    let http = client(&ca);

    // The one slot goes to a client that connects and never says hello.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let answer = http
        .get(format!("https://{addr}/peer"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(100),
        "the handshake did not count against the budget (served after {waited:?})"
    );

    // And the silent client was cut off.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut byte))
        .await
        .expect("the silent connection is still open");
    assert!(matches!(read, Ok(0) | Err(_)));
    stop.cancel();
}

#[tokio::test]
async fn a_slow_handshake_does_not_hold_up_the_next_connection() {
    let (addr, ca, stop) = start(limits(16, Duration::from_secs(5))).await;
    let http = client(&ca);
    let _silent: Vec<TcpStream> = silent_connections(addr, 4).await;
    let started = Instant::now();
    let answer = http
        .get(format!("https://{addr}/peer"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a pending handshake blocked the accept loop ({:?})",
        started.elapsed()
    );
    stop.cancel();
}

/// `n` connections to `addr` that never start their handshakes.
async fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    conns
}
