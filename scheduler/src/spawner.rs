//! Spawning and supervising `berth-session` processes.
//!
//! A spawn decision is taken under `spawn_lock`: a create that needs capacity first *claims* a
//! slot of a server that is already starting, and only when those slots are all counted on does
//! it start a new one, never past `max_servers` (starting, ready and draining servers count).
//! The new entry is `starting` with its pid; one supervisor task per child then awaits, in one
//! `select!`: the child's exit, the spawn timeout (while it has not registered), a kill request
//! (silent long after it was declared dead) and the scheduler's shutdown (SIGTERM, bounded wait,
//! SIGKILL). However the child ends, its rooms are orphaned, to be re-placed on their next
//! lookup; a registered child that exited stays listed as `dead` with its exit status for a
//! while, and is counted by cause.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use berth_protocol::cluster::{Capacity, ServerState};
use tokio::process::{Child, Command};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::{self, ApiError};
use crate::metrics::{ExitCause, inc};
use crate::registry::{Server, lock, spare_slots};
use crate::state::AppState;

/// A create counting on one slot of a starting server; gives the claim back when dropped.
pub struct Claim {
    pub server: Arc<Server>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.server.unclaim();
    }
}

/// Claims a slot on a starting server, starting a new server when the starting ones' slots are
/// all counted on. Fails with 503 `no_capacity` at `max_servers`.
pub fn claim_capacity(state: &AppState) -> Result<Claim, ApiError> {
    let server = {
        let _decision = lock(&state.spawn_lock);
        let servers = state.registry.snapshot();
        if let Some(s) = servers
            .iter()
            .find(|s| s.state() == ServerState::Starting && !s.drain_requested() && s.try_claim())
        {
            return Ok(Claim {
                server: Arc::clone(s),
            });
        }
        let active = servers.iter().filter(|s| s.is_active()).count();
        if active >= state.config.max_servers as usize {
            inc(&state.metrics.no_capacity);
            warn!(
                active,
                max_servers = state.config.max_servers,
                "no free room slot and the fleet is at its cap"
            );
            return Err(error::no_capacity(
                &state.config,
                "every session server is full and the fleet is at its cap",
            ));
        }
        let server = new_starting(state);
        // A fresh server has at least one slot.
        server.try_claim();
        server
    };
    // Outside the lock: fork and exec take a while, and the entry already counts.
    start(state, &server);
    Ok(Claim { server })
}

/// Starts servers until the free slots (on ready servers, plus unclaimed ones on starting
/// servers) cover `target`, within `max_servers`. Returns how many were started.
pub fn top_up(state: &AppState, target: u32) -> usize {
    let started = {
        let _decision = lock(&state.spawn_lock);
        let servers = state.registry.snapshot();
        let mut free = spare_slots(&servers);
        let mut active = servers.iter().filter(|s| s.is_active()).count();
        let mut started = Vec::new();
        while free < target && active < state.config.max_servers as usize {
            let server = new_starting(state);
            free = free.saturating_add(server.capacity());
            active += 1;
            started.push(server);
        }
        started
    };
    for server in &started {
        info!(server_id = %server.id, "spawning a session server for the warm buffer");
        start(state, server);
    }
    started.len()
}

/// Inserts a new `starting` entry under a fresh id. Call with `spawn_lock` held.
fn new_starting(state: &AppState) -> Arc<Server> {
    let capacity = Capacity {
        rooms: state.config.rooms_per_server,
        members_per_room: state.config.members_per_room,
    };
    loop {
        // An id collision (rare) just draws again.
        if let Some(server) = state.registry.try_insert(Server::starting(
            berth_protocol::ids::new_server_id(),
            capacity,
        )) {
            return server;
        }
    }
}

/// The session-server binary: `--session-bin`, else `berth-session` beside this executable.
pub fn session_bin(config: &Config) -> PathBuf {
    if let Some(bin) = &config.session_bin {
        return bin.clone();
    }
    let name = format!("berth-session{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Where a spawned session server binds: loopback while clients reach it by a loopback name,
/// every interface once `--session-host` names this machine to others.
fn session_listen_addr(session_host: &str) -> &'static str {
    let loopback = session_host == "localhost"
        || session_host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback { "127.0.0.1:0" } else { "0.0.0.0:0" }
}

/// Whether a spawned session server lives and dies with this scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when the scheduler drops it or dies (parent-death signal): the single-process
    /// scheduler, whose registry dies with it.
    TiedToScheduler,
    /// Left running: a replica's servers outlive it and re-home to another replica.
    Detached,
}

/// The command line of a spawned session server (docs/architecture.md, "Scheduler ↔ session
/// server"). The server gets its own credential, in the environment only (never in the
/// arguments), and not the cluster secret.
pub fn session_command(
    config: &Config,
    bin: &Path,
    server_id: &str,
    scheduler_url: &str,
    secret: &str,
    lifetime: Lifetime,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(session_listen_addr(&config.session_host))
        .arg("--managed")
        .arg("--server-id")
        .arg(server_id)
        .arg("--scheduler-url")
        .arg(scheduler_url)
        .arg("--host")
        .arg(&config.session_host)
        .arg("--admin-listen")
        .arg(std::net::SocketAddr::new(config.session_admin_host, 0).to_string())
        .arg("--rooms")
        .arg(config.rooms_per_server.to_string())
        .arg("--members-per-room")
        .arg(config.members_per_room.to_string())
        .arg("--ticket-public-key")
        .arg(config.ticket_public_key_path())
        .arg("--data-dir")
        .arg(&config.cluster.data_dir)
        .arg("--room-idle-secs")
        .arg(config.room_idle_secs.to_string())
        .arg("--drain-timeout-secs")
        .arg(config.drain_timeout_secs.to_string())
        // Its own credential, never the cluster secret (which it would otherwise inherit).
        .env_remove("BERTH_CLUSTER_SECRET")
        .env(
            "BERTH_SERVER_CREDENTIAL",
            berth_protocol::cluster::server_credential(secret, server_id),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(lifetime == Lifetime::TiedToScheduler);
    // The same store as ours; the database URL may hold a password: environment only.
    if let Some(kind) = config.store.store
        && let Some(value) = clap::ValueEnum::to_possible_value(&kind)
    {
        cmd.arg("--store").arg(value.get_name());
    }
    if let Some(url) = &config.store.database_url {
        cmd.env("BERTH_DATABASE_URL", url);
    }
    for (name, value) in config.webhooks.env() {
        cmd.env(name, value);
    }
    // Our certificate serves them too (they run on this machine), and our trust reaches us.
    let tls = &config.tls;
    for (flag, path) in [
        ("--tls-cert", &tls.tls_cert),
        ("--tls-key", &tls.tls_key),
        ("--tls-ca", &tls.tls_ca),
    ] {
        if let Some(path) = path {
            cmd.arg(flag).arg(path);
        }
    }
    if tls.tls_cert.is_some() {
        cmd.arg("--tls-reload-secs")
            .arg(tls.tls_reload_secs.to_string());
    }
    if let Some(template) = &config.session_public_url {
        cmd.arg("--public-url").arg(template.as_str());
    }
    if lifetime == Lifetime::TiedToScheduler {
        die_with_parent(&mut cmd);
    }
    cmd
}

/// Starts the process of a `starting` entry and hands it to a supervisor task. On failure the
/// entry is retired at once (waiters see it dead and answer 503).
fn start(state: &AppState, server: &Arc<Server>) {
    let bin = session_bin(&state.config);
    let mut cmd = session_command(
        &state.config,
        &bin,
        &server.id,
        &state.scheduler_url,
        &state.secret,
        Lifetime::TiedToScheduler,
    );
    if state.shutdown.is_cancelled() {
        warn!(server_id = %server.id, "not spawning: the scheduler is shutting down");
        retire(state, server);
        return;
    }
    inc(&state.metrics.spawns);
    match cmd.spawn() {
        Ok(child) => {
            server.set_pid(child.id());
            info!(server_id = %server.id, pid = ?child.id(), bin = %bin.display(), "spawned a session server");
            let task_state = state.clone();
            let task_server = Arc::clone(server);
            state.tasks.spawn(supervise(task_state, task_server, child));
        }
        Err(e) => {
            inc(&state.metrics.spawn_failures);
            error!(server_id = %server.id, bin = %bin.display(), error = %e, "cannot spawn a session server (see --session-bin)");
            retire(state, server);
        }
    }
}

/// Forgets a server that is gone: dead state (wakes waiters), out of the registry, its rooms
/// orphaned (re-placed on their next lookup).
pub fn retire(state: &AppState, server: &Arc<Server>) {
    server.set_state(ServerState::Dead);
    state.registry.remove_if_same(server);
    // A newer entry under the same id (the process registered again after leaving) owns the
    // rooms now: leave them alone.
    if state.registry.get(&server.id).is_some() {
        return;
    }
    let orphaned = state.directory.orphan_server(server);
    if orphaned > 0 {
        info!(server_id = %server.id, orphaned, "rooms of a gone server will be re-placed on lookup");
    }
}

/// Keeps a server whose process ended (or that was declared dead) listed as `dead` with
/// `reason` for `dead_retention`, its rooms orphaned (re-placed on their next lookup). A server
/// that already left (or was replaced under its id) is left alone.
pub fn bury(state: &AppState, server: &Arc<Server>, reason: String) {
    let current = state
        .registry
        .get(&server.id)
        .is_some_and(|s| Arc::ptr_eq(&s, server));
    if !current {
        server.set_state(ServerState::Dead);
        return;
    }
    server.set_dead(reason);
    let orphaned = state.directory.orphan_server(server);
    if orphaned > 0 {
        info!(server_id = %server.id, orphaned, "rooms of a dead server will be re-placed on lookup");
    }
}

/// Why a process ended, as counted in `/metrics`.
pub(crate) fn exit_cause(status: &io::Result<ExitStatus>) -> ExitCause {
    #[cfg(unix)]
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) if s.success() => ExitCause::Clean,
        #[cfg(unix)]
        Ok(s) if s.signal().is_some() => ExitCause::Signal,
        _ => ExitCause::Error,
    }
}

/// How a child's supervision ended.
enum End {
    Exited,
    SpawnTimeout,
    Killed,
    Shutdown,
}

/// Watches one child until it exits, killing it when asked, when it does not register within
/// the spawn timeout, or (SIGTERM first) when the scheduler stops.
async fn supervise(state: AppState, server: Arc<Server>, mut child: Child) {
    let spawn_deadline = tokio::time::sleep(state.config.spawn_timeout());
    tokio::pin!(spawn_deadline);
    let mut awaiting_registration = true;
    let (end, status) = loop {
        tokio::select! {
            status = child.wait() => break (End::Exited, status),
            _ = &mut spawn_deadline, if awaiting_registration => {
                awaiting_registration = false;
                if server.state() == ServerState::Starting {
                    break (End::SpawnTimeout, kill(&mut child).await);
                }
            }
            _ = server.kill_requested() => break (End::Killed, kill(&mut child).await),
            _ = state.shutdown.cancelled() => {
                break (End::Shutdown, terminate(&mut child, &server, &state.config).await);
            }
        }
    };
    server.set_exited();
    let was_starting = server.state() == ServerState::Starting;
    let cause = exit_cause(&status);
    let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
    match end {
        End::SpawnTimeout => {
            retire(&state, &server);
            inc(&state.metrics.spawn_failures);
            error!(server_id = %server.id, timeout_ms = state.config.spawn_timeout_ms, "session server did not register in time; killed");
        }
        End::Exited if was_starting => {
            retire(&state, &server);
            inc(&state.metrics.spawn_failures);
            error!(server_id = %server.id, %status, "session server exited before registering");
        }
        End::Exited => {
            // Evidence of death: listed as dead with its status, counted by cause.
            let was_listed = server.state() != ServerState::Dead;
            if was_listed {
                state.metrics.server_exit(cause);
            }
            bury(&state, &server, format!("process exited: {status}"));
            warn!(server_id = %server.id, %status, cause = cause.as_str(), "session server exited");
        }
        End::Killed => {
            let silent = server.dead_reason().unwrap_or_default();
            bury(&state, &server, format!("{silent}; killed ({status})"));
            warn!(server_id = %server.id, %status, "killed a session server that stayed silent");
        }
        End::Shutdown => {
            retire(&state, &server);
            info!(server_id = %server.id, %status, "session server stopped");
        }
    }
}

/// SIGKILL and reap.
pub(crate) async fn kill(child: &mut Child) -> io::Result<ExitStatus> {
    if let Err(e) = child.start_kill() {
        warn!(error = %e, "cannot kill a session server");
    }
    child.wait().await
}

/// SIGTERM, wait up to the shutdown timeout, then SIGKILL.
async fn terminate(child: &mut Child, server: &Server, config: &Config) -> io::Result<ExitStatus> {
    // `id()` is None once the child was reaped: then there is nothing to signal.
    if let Some(pid) = child.id()
        && let Err(e) = send_sigterm(pid)
    {
        warn!(server_id = %server.id, error = %e, "cannot send SIGTERM to a session server");
    }
    match tokio::time::timeout(config.shutdown_timeout(), child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(server_id = %server.id, timeout_ms = config.shutdown_timeout_ms, "session server did not stop in time; killing");
            kill(child).await
        }
    }
}

/// Asks the kernel to send SIGTERM to the child when this scheduler dies, so that a crashed or
/// killed scheduler leaves no orphan. Note: Linux fires it when the *thread* that forked exits;
/// spawns happen on tokio worker threads, which live as long as the runtime.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called. It calls prctl(2) and getppid(2), both plain system calls that
    // neither allocate nor take locks, and builds an io::Error from errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The scheduler may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Sends SIGTERM to a child process of ours.
#[cfg(unix)]
#[allow(unsafe_code)]
fn send_sigterm(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) has no memory-safety preconditions. `pid` is positive (never a process
    // group or "every process") and names our own child that has not been reaped yet (the caller
    // got it from `Child::id`, which is None after reaping), so it cannot name another process.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn send_sigterm(_pid: u32) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_command_line_follows_the_contract_and_hides_the_secret() {
        let config = Config::parse_from([
            "berth-scheduler",
            "--rooms-per-server",
            "7",
            "--members-per-room",
            "9",
            "--session-host",
            "example.test",
            "--room-idle-secs",
            "11",
            "--drain-timeout-secs",
            "13",
        ]);
        let secret = "s3cr3t-value";
        let cmd = session_command(
            &config,
            Path::new("/opt/berth-session"),
            "s-abc",
            "http://127.0.0.1:7070",
            secret,
            Lifetime::TiedToScheduler,
        );
        let std = cmd.as_std();
        assert_eq!(std.get_program(), "/opt/berth-session");
        let args: Vec<String> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for expected in [
            "--listen 0.0.0.0:0",
            "--managed",
            "--server-id s-abc",
            "--scheduler-url http://127.0.0.1:7070",
            "--host example.test",
            "--rooms 7",
            "--members-per-room 9",
            "--ticket-public-key ./.berth/ticket.pub.pem",
            "--room-idle-secs 11",
            "--drain-timeout-secs 13",
        ] {
            assert!(
                joined.contains(expected),
                "missing `{expected}` in `{joined}`"
            );
        }
        assert!(!joined.contains(secret));
        let env: Vec<_> = std.get_envs().collect();
        let credential = berth_protocol::cluster::server_credential(secret, "s-abc");
        assert!(env.iter().any(|(k, v)| *k == "BERTH_SERVER_CREDENTIAL"
            && *v == Some(std::ffi::OsStr::new(&credential))));
        assert!(
            env.iter()
                .any(|(k, v)| *k == "BERTH_CLUSTER_SECRET" && v.is_none()),
            "the cluster secret is removed from the inherited environment"
        );
        assert!(!format!("{env:?}").contains(secret));
    }

    #[test]
    fn spawned_servers_listen_on_loopback_only_for_loopback_hosts() {
        assert_eq!(session_listen_addr("127.0.0.1"), "127.0.0.1:0");
        assert_eq!(session_listen_addr("localhost"), "127.0.0.1:0");
        assert_eq!(session_listen_addr("[::1]"), "127.0.0.1:0");
        assert_eq!(session_listen_addr("chat.example.com"), "0.0.0.0:0");
        assert_eq!(session_listen_addr("10.0.0.5"), "0.0.0.0:0");
    }

    #[test]
    fn default_session_bin_sits_beside_this_executable() {
        let config = Config::parse_from(["berth-scheduler"]);
        let bin = session_bin(&config);
        assert_eq!(bin.parent(), std::env::current_exe().unwrap().parent());
        assert!(
            bin.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("berth-session")
        );
    }
}
