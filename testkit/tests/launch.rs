//! `scripts/launch.sh` writes the cluster secret to `<data dir>/cluster.secret` (mode 0600) and
//! prints its path and a ready-to-paste `curl`; the secret in that file opens `GET /v1/servers`.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use berth_protocol::cluster::ServerList;
use berth_testkit::{bin_path, eventually, signal, temp_dir};
use tokio::io::{AsyncBufReadExt, BufReader};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_sh_stores_the_cluster_secret_for_operators() {
    let dir = temp_dir("launch");
    // launch.sh runs `berth-*` from BERTH_BIN_DIR: point those names at the test builds.
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["backend", "scheduler", "session", "bot"] {
        std::os::unix::fs::symlink(
            bin_path(&format!("testkit-{name}")),
            bins.join(format!("berth-{name}")),
        )
        .unwrap();
    }
    let data = dir.join("data");
    let (backend_port, scheduler_port, bot_port) = (free_port(), free_port(), free_port());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/launch.sh");
    // In a session of its own (setsid execs bash, so the pid stays), like a terminal's job:
    // stopping its process group at the end never reaches the test runner's.
    let mut launch = tokio::process::Command::new("setsid")
        .arg("bash")
        .arg(&script)
        .env("BERTH_BIN_DIR", &bins)
        .env("BERTH_DATA_DIR", &data)
        .env("BERTH_BACKEND_LISTEN", format!("127.0.0.1:{backend_port}"))
        .env(
            "BERTH_SCHEDULER_LISTEN",
            format!("127.0.0.1:{scheduler_port}"),
        )
        .env("BERTH_BOT_LISTEN", format!("127.0.0.1:{bot_port}"))
        .env_remove("BERTH_BACKEND_URL")
        .env("BERTH_WARM_SERVERS", "0")
        .env_remove("BERTH_CLUSTER_SECRET")
        .env_remove("BERTH_SCHEDULER_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = launch.id().unwrap();

    // The banner names the secret file and a curl command for the fleet.
    let mut lines = BufReader::new(launch.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read_banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("Ctrl-C stops everything");
            banner.push(line);
            if done {
                break;
            }
        }
    };
    let started = tokio::time::timeout(Duration::from_secs(60), read_banner).await;
    let stop = || {
        // The whole process group: the script and everything it started. `--` before the
        // group: without it procps' kill reads `-N` as an option, and when the group is gone
        // it signalled the test runner's own group instead.
        let _ = std::process::Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{pid}")])
            .status();
    };
    if started.is_err() {
        stop();
        panic!("launch.sh printed no banner within 60 s: {banner:#?}");
    }
    let banner = banner.join("\n");
    let secret_file = data.join("cluster.secret");
    let path_shown = secret_file.display().to_string();
    assert!(
        banner.contains(&path_shown),
        "banner names {path_shown}:\n{banner}"
    );
    let curl = format!(
        "curl -sH \"Authorization: Bearer $(cat {path_shown})\" http://127.0.0.1:{scheduler_port}/v1/servers"
    );
    assert!(banner.contains(&curl), "banner shows `{curl}`:\n{banner}");

    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secret file is private");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let secret = secret.trim();
    assert!(secret.len() >= 32, "a random secret of 32 bytes in hex");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{scheduler_port}/v1/servers");
    let refused = http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "no secret, no fleet");
    let answer = http.get(&url).bearer_auth(secret).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let _: ServerList = answer.json().await.unwrap();

    // The banner's curl works as pasted.
    let shell = tokio::process::Command::new("bash")
        .args(["-c", &format!("{curl} -o /dev/null -w '%{{http_code}}'")])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&shell.stdout), "200", "{shell:?}");

    signal(pid, "TERM");
    let ended = tokio::time::timeout(Duration::from_secs(20), launch.wait()).await;
    stop();
    assert!(ended.is_ok(), "launch.sh stops within 20 s of SIGTERM");
    eventually(Duration::from_secs(10), || async move {
        std::net::TcpStream::connect(("127.0.0.1", backend_port)).is_err()
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
