//! Property tests over every JSON body of the public API: arbitrary bytes and arbitrary JSON
//! never make the backend fail (no 5xx but the documented 503 of an unreachable scheduler) and
//! every refusal is the error body with a documented code.

use std::net::SocketAddr;

use berth_backend::Config;
use clap::Parser as _;
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Codes a body may be refused with.
const DOCUMENTED: [&str; 4] = [
    "invalid_request",
    "invalid_username",
    "unauthorized",
    "scheduler_unavailable",
];

struct Backend {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    http: reqwest::Client,
    token: String,
    _shutdown: tokio_util::sync::DropGuard,
}

fn backend() -> &'static Backend {
    static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    BACKEND.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("berth-bodies-{:016x}", rand::random::<u64>()));
        // A scheduler that is not there: a valid create is answered 503, which is documented.
        let config = Config::parse_from([
            "berth-backend",
            "--data-dir",
            dir.to_str().unwrap(),
            "--scheduler-url",
            "http://127.0.0.1:9",
            "--cluster-secret",
            "s",
            // One client sends every case: the request limits are not under test here.
            "--api-rate-per-address",
            "0",
            "--api-rate-per-user",
            "0",
            "--create-rate-per-address",
            "0",
        ]);
        let shutdown = CancellationToken::new();
        let (addr, token) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(berth_backend::serve(listener, config, shutdown.clone()));
            let login: Value = reqwest::Client::new()
                .post(format!("http://{addr}/api/login"))
                .json(&serde_json::json!({"username": "prop"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (addr, login["token"].as_str().unwrap().to_owned())
        });
        Backend {
            runtime,
            addr,
            http: reqwest::Client::new(),
            token,
            _shutdown: shutdown.drop_guard(),
        }
    })
}

/// POSTs `body` to `path` and checks the answer is a success or a documented refusal.
fn check(path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let b = backend();
    let (status, text) = b.runtime.block_on(async {
        let resp = b
            .http
            .post(format!("http://{}{path}", b.addr))
            .bearer_auth(&b.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    if status < 300 {
        return Ok(());
    }
    prop_assert!(status < 500 || status == 503, "{status} {text}");
    let v: Value =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    let code = v["error"]["code"].as_str().unwrap_or_default();
    prop_assert!(DOCUMENTED.contains(&code), "{status} {text}");
    prop_assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    Ok(())
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("username".to_owned()),
                    Just("name".to_owned()),
                    Just("public".to_owned()),
                    ".{0,10}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_a_documented_answer(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check("/api/login", body.clone())?;
        check("/api/rooms", body)?;
    }

    #[test]
    fn arbitrary_json_gets_a_documented_answer(value in json()) {
        let body = serde_json::to_vec(&value).unwrap();
        check("/api/login", body.clone())?;
        check("/api/rooms", body)?;
    }
}
