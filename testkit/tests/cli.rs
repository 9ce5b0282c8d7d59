//! `berth register`, `login`, `whoami`, `logout`: the token kept in the config directory (0600)
//! and reused by the other commands, against a whole cluster.

use std::io::Write;
use std::process::{Output, Stdio};

use berth_testkit::{Cluster, ClusterOptions, bin_path};

fn berth(backend: &str, dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = std::process::Command::new(bin_path("testkit-berth"))
        .arg("--backend")
        .arg(backend)
        .arg("--config-dir")
        .arg(dir)
        .args(args)
        .env_remove("BERTH_USERNAME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_reuse_the_kept_token() {
    let cluster = Cluster::start(ClusterOptions {
        backend_args: ["--argon2-memory-kib", "64", "--argon2-iterations", "1"]
            .map(String::from)
            .to_vec(),
        ..ClusterOptions::default()
    })
    .await;
    let url = cluster.backend_url.clone();
    let dir = berth_testkit::temp_dir("cli-config");
    let password = "Cli-pass-9d2e41";

    let run = |args: &'static [&'static str], stdin: String| {
        let (url, dir) = (url.clone(), dir.clone());
        tokio::task::spawn_blocking(move || berth(&url, &dir, args, &stdin))
    };

    let out = run(
        &["--username", "Zoe", "register", "--password-stdin"],
        format!("{password}\n"),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let file = dir.join("credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(!kept.contains(password), "only the token is kept");

    // The kept token is used by the other commands.
    let out = run(&["whoami"], String::new()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["username"], "Zoe");
    assert_eq!(me["guest"], false);
    let out = run(&["create", "--name", "cli room"], String::new())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Signed out: the name is an account's, so a guest sign-in is refused.
    let out = run(&["logout"], String::new()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["--username", "zoe", "whoami"], String::new())
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password_required"),
        "{}",
        text(&out)
    );

    // Wrong password, then the right one.
    let out = run(
        &["--username", "zoe", "login", "--password-stdin"],
        "nope-nope\n".into(),
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_credentials"),
        "{}",
        text(&out)
    );
    let out = run(
        &["--username", "zoe", "login", "--password-stdin"],
        format!("{password}\n"),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["whoami"], String::new()).await.unwrap();
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["username"], "Zoe");

    // Without a terminal and without --password-stdin there is nothing to ask on.
    let out = run(&["--username", "zoe", "login"], String::new())
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--password-stdin"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
    cluster.stop().await;
}

/// `berth rooms --mine` lists the user's rooms with unread counts; `berth dm USER` chats in the
/// direct-message room (the history shows, typed lines are sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_mine_and_dm() {
    use berth::protocol::frames::ServerFrame;
    use berth::{RoomConnection, RoomEvent};

    let cluster = Cluster::start(ClusterOptions {
        backend_args: ["--argon2-memory-kib", "64", "--argon2-iterations", "1"]
            .map(String::from)
            .to_vec(),
        ..ClusterOptions::default()
    })
    .await;
    let url = cluster.backend_url.clone();
    let dir = berth_testkit::temp_dir("cli-dm");
    let run = |args: &'static [&'static str], stdin: String| {
        let (url, dir) = (url.clone(), dir.clone());
        tokio::task::spawn_blocking(move || berth(&url, &dir, args, &stdin))
    };
    let out = run(
        &["--username", "ana", "register", "--password-stdin"],
        "ana-password-1\n".into(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let backend = cluster.backend();
    let bob = backend.register("bob", "bob-password-1").await.unwrap();
    let dm = backend.open_dm(&bob, "ana").await.unwrap();
    let (mut conn, _) = RoomConnection::connect_ticket(&dm.ticket).await.unwrap();
    for text in ["one", "two"] {
        conn.send(text, None).await.unwrap();
    }
    let mut seen = 0;
    while seen < 2 {
        if let RoomEvent::Frame(ServerFrame::Message(_)) = conn
            .recv_timeout(std::time::Duration::from_secs(15))
            .await
            .unwrap()
        {
            seen += 1;
        }
    }

    let out = run(&["rooms", "--mine"], String::new()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mine: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let room = &mine["rooms"][0];
    assert_eq!(room["roomId"], dm.ticket.room_id.as_str(), "{mine}");
    assert_eq!(room["name"], "bob");
    assert_eq!(room["dm"]["username"], "bob");
    assert_eq!(
        (room["lastSeq"].as_u64(), room["unread"].as_u64()),
        (Some(2), Some(2))
    );

    let out = run(&["dm", "bob"], "hello bob\n".into()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("bob: one") && shown.contains("bob: two"),
        "{}",
        text(&out)
    );
    loop {
        match conn
            .recv_timeout(std::time::Duration::from_secs(15))
            .await
            .unwrap()
        {
            RoomEvent::Frame(ServerFrame::Message(m)) => {
                assert_eq!((m.username.as_str(), m.text.as_str()), ("ana", "hello bob"));
                break;
            }
            RoomEvent::Frame(_) => {}
            RoomEvent::Closed { code, reason } => panic!("closed {code:?}: {reason}"),
        }
    }
    conn.close().await.unwrap();
    cluster.stop().await;
}
