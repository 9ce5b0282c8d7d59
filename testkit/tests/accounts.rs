//! Accounts and identity end to end: registration rules, sign-in, guests, throttling, token
//! refresh and revocation, no secret in any log line, and tokens of an outside identity
//! provider (a JWKS served by a small HTTP server inside the test).
//!
//! The account flows run against both stores: SQLite, and PostgreSQL when
//! `BERTH_TEST_DATABASE_URL` is set (always under CI).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::protocol::api::CreateRoomRequest;
use berth::{Backend, ClientError, RoomConnection, Session};
use berth_store::testing::{TempDatabase, postgres_admin_url};
use berth_testkit::{Cluster, ClusterOptions, bin_path, eventually, signal, temp_dir};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Cheap argon2 parameters: the tests check behaviour, not cost.
const CHEAP_ARGON2: [&str; 4] = ["--argon2-memory-kib", "64", "--argon2-iterations", "1"];

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn code(e: &ClientError) -> (Option<u16>, Option<&str>) {
    (e.status(), e.code())
}

/// The store a test runs against: SQLite, or a fresh PostgreSQL database.
async fn database(postgres: bool) -> Option<Option<TempDatabase>> {
    if !postgres {
        return Some(None);
    }
    let admin = postgres_admin_url()?;
    Some(Some(TempDatabase::create(&admin).await))
}

async fn cluster(db: &Option<TempDatabase>, extra: &[&str]) -> Cluster {
    let mut backend_args = args(&CHEAP_ARGON2);
    backend_args.extend(args(extra));
    Cluster::start(ClusterOptions {
        backend_args,
        database_url: db.as_ref().map(|d| d.url.clone()),
        ..ClusterOptions::default()
    })
    .await
}

macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(false).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(true).await;
            }
        }
    };
}

both_stores!(register_sign_in_guests_refresh_and_password_change);

async fn register_sign_in_guests_refresh_and_password_change(postgres: bool) {
    let Some(db) = database(postgres).await else {
        return;
    };
    let cluster = cluster(&db, &[]).await;
    let backend = cluster.backend();

    // A guest uses the name "carol" before any account holds it.
    let guest = backend.login("carol").await.unwrap();
    assert!(guest.guest);
    assert_eq!(guest.user_id, "g-carol");
    assert!(guest.expires_at.is_some());
    assert!(backend.me(&guest).await.unwrap().guest);

    // Registration rules.
    let e = backend.register("Carol", "short").await.unwrap_err();
    assert_eq!(code(&e), (Some(400), Some("weak_password")));
    let e = backend
        .register("Carol", &"p".repeat(257))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(400), Some("weak_password")));
    let e = backend
        .register("no spaces", "long enough pw")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(400), Some("invalid_username")));
    let carol = backend.register("Carol", "correct horse").await.unwrap();
    assert!(!carol.guest && carol.username == "Carol");
    assert!(carol.user_id.starts_with("a-"), "{}", carol.user_id);
    // The guest who used the name first has another id, and its token stops working.
    assert_ne!(carol.user_id, guest.user_id);
    let e = backend.me(&guest).await.unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("password_required")));
    // The same name in another case is taken.
    let e = backend
        .register("cAROL", "another password")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(409), Some("username_taken")));

    // Sign in: any case of the name, the registered case shown, the same user id.
    let again = backend
        .login_with_password("CAROL", "correct horse")
        .await
        .unwrap();
    assert_eq!(
        (again.user_id.as_str(), again.username.as_str(), again.guest),
        (carol.user_id.as_str(), "Carol", false)
    );
    let me = backend.me(&again).await.unwrap();
    assert_eq!(
        (me.user_id.as_str(), me.username.as_str(), me.guest),
        (carol.user_id.as_str(), "Carol", false)
    );
    // Wrong password and unknown name answer alike.
    let wrong = backend
        .login_with_password("carol", "wrong horse")
        .await
        .unwrap_err();
    let unknown = backend
        .login_with_password("nobody", "wrong horse")
        .await
        .unwrap_err();
    assert_eq!(code(&wrong), (Some(401), Some("invalid_credentials")));
    assert_eq!(wrong.to_string(), unknown.to_string());
    // No password on an account's name: refused, in any case.
    let e = backend.login("cArOl").await.unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("password_required")));

    // An account creates a room under its own id.
    let ticket = backend
        .create_room(&again, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (conn, welcome) = RoomConnection::connect(&ticket.url, &ticket.token)
        .await
        .unwrap();
    assert_eq!(welcome.you.user_id, carol.user_id);
    assert_eq!(welcome.you.username, "Carol");
    drop(conn);

    // Refresh: a new token that works, for accounts and guests.
    let refreshed = backend.refresh(&again).await.unwrap();
    assert_eq!(refreshed.user_id, carol.user_id);
    assert!(refreshed.expires_at >= again.expires_at);
    backend.me(&refreshed).await.unwrap();
    let dave = backend.login("dave").await.unwrap();
    assert!(backend.refresh(&dave).await.unwrap().guest);
    let e = backend
        .refresh(&Session::from_token("forged"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("unauthorized")));

    // Password change: the old password is needed; every older token stops working.
    let e = backend
        .change_password(&again, "not the password", "battery staple")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("invalid_credentials")));
    let e = backend
        .change_password(&again, "correct horse", "short")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(400), Some("weak_password")));
    let e = backend
        .change_password(&dave, "x", "battery staple")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(403), Some("account_required")));
    let changed = backend
        .change_password(&again, "correct horse", "battery staple")
        .await
        .unwrap();
    for old in [&carol, &again, &refreshed] {
        let e = backend.me(old).await.unwrap_err();
        assert_eq!(code(&e), (Some(401), Some("unauthorized")));
        let e = backend
            .create_room(old, &CreateRoomRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401));
    }
    assert_eq!(backend.me(&changed).await.unwrap().user_id, carol.user_id);
    let e = backend
        .login_with_password("carol", "correct horse")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("invalid_credentials")));
    backend
        .login_with_password("carol", "battery staple")
        .await
        .unwrap();

    // Unknown names cost about as much time as wrong passwords (a dummy hash is verified).
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    let slow = cluster_with_real_cost(&db).await;
    let slow_backend = slow.backend();
    slow_backend
        .register("timed", "correct horse")
        .await
        .unwrap();
    for i in 0..5 {
        let t = Instant::now();
        let _ = slow_backend.login_with_password("timed", "wrong").await;
        known.push(t.elapsed());
        let t = Instant::now();
        let _ = slow_backend
            .login_with_password(&format!("ghost{i}"), "wrong")
            .await;
        unknown.push(t.elapsed());
    }
    let (known, unknown) = (median(known), median(unknown));
    eprintln!("sign-in time, median of 5: wrong password {known:?}, unknown name {unknown:?}");
    assert!(
        unknown * 3 >= known && known * 3 >= unknown,
        "wrong password took {known:?}, unknown name {unknown:?}"
    );
    slow.stop().await;
    cluster.stop().await;
}

/// A second backend on the same store with argon2 costly enough to time, and no throttle.
async fn cluster_with_real_cost(db: &Option<TempDatabase>) -> Cluster {
    Cluster::start(ClusterOptions {
        backend_args: args(&[
            "--argon2-memory-kib",
            "8192",
            "--argon2-iterations",
            "2",
            "--login-name-burst",
            "0",
            "--login-address-burst",
            "0",
        ]),
        database_url: db.as_ref().map(|d| d.url.clone()),
        ..ClusterOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_can_be_turned_off() {
    let cluster = cluster(&None, &["--guests", "false"]).await;
    let backend = cluster.backend();
    let e = backend.login("erin").await.unwrap_err();
    assert_eq!(code(&e), (Some(403), Some("guests_disabled")));
    backend.register("erin", "long enough").await.unwrap();
    // An account's name without its password is still told apart.
    let e = backend.login("erin").await.unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("password_required")));
    backend
        .login_with_password("erin", "long enough")
        .await
        .unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_throttled_with_retry_after() {
    let cluster = cluster(
        &None,
        &["--login-name-burst", "3", "--login-name-refill-secs", "30"],
    )
    .await;
    let backend = cluster.backend();
    backend.register("frank", "correct horse").await.unwrap();
    // Successes do not count.
    for _ in 0..5 {
        backend
            .login_with_password("frank", "correct horse")
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let e = backend
            .login_with_password("Frank", "guess")
            .await
            .unwrap_err();
        assert_eq!(code(&e), (Some(401), Some("invalid_credentials")));
    }
    // Throttled now, even with the right password (no more checks for a while)…
    for password in ["guess", "correct horse"] {
        let e = backend
            .login_with_password("frank", password)
            .await
            .unwrap_err();
        assert_eq!(code(&e), (Some(429), Some("rate_limited")));
        let wait = e.retry_after().expect("Retry-After");
        assert!((1..=30).contains(&wait), "Retry-After {wait}");
    }
    // …for this name only.
    let e = backend
        .login_with_password("someone", "guess")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(401), Some("invalid_credentials")));
    cluster.stop().await;
}

// --- no secret in the logs ------------------------------------------------------------------

both_stores!(no_password_or_hash_in_any_log_line);

async fn no_password_or_hash_in_any_log_line(postgres: bool) {
    let Some(db) = database(postgres).await else {
        return;
    };
    let dir = temp_dir("accounts-logs");
    let log_path = dir.join("backend.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = tokio::process::Command::new(bin_path("testkit-backend"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--scheduler-url", "http://127.0.0.1:9"])
        .args(["--cluster-secret", "log-test-secret"])
        .args(CHEAP_ARGON2)
        .arg("--data-dir")
        .arg(&dir)
        // Everything, from every crate (database drivers included).
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("backend.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true);
    if let Some(db) = &db {
        cmd.args(["--database-url", &db.url]);
    }
    let mut child = cmd.spawn().unwrap();
    let backend = Backend::new(&url);
    // Up when it answers (its /healthz needs a scheduler, which this test does not run).
    eventually(Duration::from_secs(20), || {
        let backend = backend.clone();
        async move {
            backend
                .list_rooms()
                .await
                .is_err_and(|e| e.status().is_some())
        }
    })
    .await;

    let (first, second, wrong) = (
        "Pw-first-7f3a9c1e",
        "Pw-second-52bd0e8a",
        "Pw-wrong-c4e61b77",
    );
    let s = backend.register("grace", first).await.unwrap();
    let _ = backend.login_with_password("grace", wrong).await;
    let _ = backend.login_with_password("nobody", wrong).await;
    let _ = backend.login("grace").await;
    let s = backend.change_password(&s, first, second).await.unwrap();
    backend.login_with_password("GRACE", second).await.unwrap();
    backend.me(&s).await.unwrap();

    signal(child.id().unwrap(), "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let logs = std::fs::read_to_string(&log_path).unwrap()
        + &std::fs::read_to_string(dir.join("backend.out")).unwrap();
    assert!(
        logs.lines().count() > 10,
        "the backend logged at trace level:\n{logs}"
    );
    if postgres {
        // The driver logs every statement's parameters at this level: the hash went by redacted.
        assert!(
            logs.contains("<redacted>"),
            "the PostgreSQL driver's parameter logs were captured"
        );
    }
    for secret in [first, second, wrong, "$argon2", &s.token] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret:?} in the logs: {leaks:#?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// --- bring your own identity ----------------------------------------------------------------

const ISSUER: &str = "https://idp.example.test/realms/berth";
const AUDIENCE: &str = "berth-app";

/// A JWKS endpoint whose key set the test swaps, counting fetches.
struct Idp {
    url: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start(keys: Value) -> Idp {
        use axum::routing::get;
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicU64::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/certs",
            get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    axum::Json(k.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Idp {
            url,
            keys,
            fetches,
            task,
        }
    }
}

/// A signing key of the pretend provider and its public JWK.
struct IdpKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

impl IdpKey {
    fn pem(kid: &str, alg: Algorithm, file: &str) -> IdpKey {
        let pem = fixture(file);
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => unreachable!(),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        IdpKey {
            kid: kid.to_owned(),
            alg,
            key,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    fn ed25519(kid: &str) -> IdpKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let signing = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let pem = signing.to_pkcs8_pem(Default::default()).unwrap();
        IdpKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                "x": base64url(signing.verifying_key().as_bytes()),
            }),
        }
    }

    /// A token with `claims`, signed by this key under `kid`.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn claims(sub: &str, name: &str) -> Value {
    let now = berth::protocol::now_secs();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "preferred_username": name,
        "iat": now, "nbf": now - 5, "exp": now + 600,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_an_outside_identity_provider() {
    let rsa = IdpKey::pem("rsa-1", Algorithm::RS256, "idp-rsa-a.pem");
    let ed = IdpKey::ed25519("ed-1");
    let idp = Idp::start(json!({ "keys": [rsa.jwk, ed.jwk] })).await;
    let cluster = cluster(
        &None,
        &[
            "--auth-jwks-url",
            &idp.url,
            "--auth-issuer",
            ISSUER,
            "--auth-audience",
            AUDIENCE,
            "--auth-jwks-min-refresh-ms",
            "500",
        ],
    )
    .await;
    let backend = cluster.backend();

    // RS256: accepted end to end, under an id of its own namespace.
    let ada = Session::from_token(rsa.sign(&claims("user-42", "Ada Lovelace")));
    let me = backend.me(&ada).await.unwrap();
    assert!(me.user_id.starts_with("x-"), "{}", me.user_id);
    assert_eq!((me.username.as_str(), me.guest), ("Ada Lovelace", false));
    let ticket = backend
        .create_room(&ada, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut conn, welcome) = RoomConnection::connect(&ticket.url, &ticket.token)
        .await
        .unwrap();
    assert_eq!(welcome.you.user_id, me.user_id);
    assert_eq!(welcome.you.username, "Ada Lovelace");
    conn.send("hello from the provider", Some("c1"))
        .await
        .unwrap();
    drop(conn);
    // The same subject is the same user on every token; a guest named like it is not.
    let again = Session::from_token(ed.sign(&claims("user-42", "ada")));
    assert_eq!(backend.me(&again).await.unwrap().user_id, me.user_id);
    // Provider tokens are renewed by the provider.
    let e = backend.refresh(&ada).await.unwrap_err();
    assert_eq!(code(&e), (Some(400), Some("invalid_request")));

    // Refused: another key under a known kid, expired, not yet valid, wrong issuer, wrong
    // audience, a symmetric algorithm.
    let other = IdpKey::pem("rsa-1", Algorithm::RS256, "idp-rsa-b.pem");
    let now = berth::protocol::now_secs();
    let mut expired = claims("user-42", "ada");
    expired["exp"] = json!(now - 120);
    let mut early = claims("user-42", "ada");
    early["nbf"] = json!(now + 600);
    let mut wrong_iss = claims("user-42", "ada");
    wrong_iss["iss"] = json!("https://evil.example.test");
    let mut wrong_aud = claims("user-42", "ada");
    wrong_aud["aud"] = json!("someone-else");
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("user-42", "ada"),
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    for (what, token) in [
        ("another key", other.sign(&claims("user-42", "ada"))),
        ("expired", rsa.sign(&expired)),
        ("not yet valid", rsa.sign(&early)),
        ("wrong issuer", rsa.sign(&wrong_iss)),
        ("wrong audience", rsa.sign(&wrong_aud)),
        ("HS256", hs),
    ] {
        let e = backend.me(&Session::from_token(token)).await.unwrap_err();
        assert_eq!(code(&e), (Some(401), Some("unauthorized")), "{what}");
    }

    // A flood of unknown kids fetches the key set at most about once per refresh interval.
    let before = idp.fetches.load(Ordering::SeqCst);
    let started = Instant::now();
    for i in 0..30 {
        let token = other.sign_as(&format!("forged-{i}"), &claims("user-42", "ada"));
        let e = backend.me(&Session::from_token(token)).await.unwrap_err();
        assert_eq!(e.status(), Some(401));
    }
    let fetched = idp.fetches.load(Ordering::SeqCst) - before;
    let allowed = 1 + started.elapsed().as_millis() as u64 / 500;
    assert!(
        fetched <= allowed,
        "{fetched} fetches in {:?}",
        started.elapsed()
    );

    // Key rotation: the provider now signs with a new EC key, picked up on its first token.
    let ec = IdpKey::pem("ec-2", Algorithm::ES256, "idp-ec.pem");
    *idp.keys.lock().unwrap() = json!({ "keys": [ec.jwk] });
    let rotated = Session::from_token(ec.sign(&claims("user-7", "Grace")));
    let me = berth_testkit::eventually_some(Duration::from_secs(5), || {
        let (backend, rotated) = (backend.clone(), rotated.clone());
        async move { backend.me(&rotated).await.ok() }
    })
    .await;
    assert_eq!(me.username, "Grace");
    backend
        .create_room(&rotated, &CreateRoomRequest::default())
        .await
        .unwrap();

    cluster.stop().await;
    idp.task.abort();
}

#[test]
fn base64url_encodes() {
    assert_eq!(base64url(b""), "");
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}
