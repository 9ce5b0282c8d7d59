//! Berth across machines, simulated with network namespaces (`berth_testkit::netns`).
//!
//! Four hosts on two networks: `cluster` (schedulers, database) and `public` (clients). Two
//! scheduler replicas (`--shared`) keep their state in one PostgreSQL database: replica 1 on
//! host `a`, with the backend, replica 2 on host `d`. Hosts `b` and `c` run session servers
//! started as an outside fleet (`--host` their own public address); they and the backend know
//! both replicas (`--scheduler-url a,d`). The database is the machine's PostgreSQL, reached
//! through a relay on the root namespace's cluster address (PostgreSQL itself listens on
//! loopback only). The test process and its clients are the root namespace, attached to both
//! networks.
//!
//! Each scenario has a deployment of its own. Under live chat, with every client recording what
//! it saw (`serverId` and epoch of each `welcome`, every message's `seq` and text):
//!
//! - replica 1 is SIGKILLed: creates and lookups through the backend go on (through replica 2),
//!   both session servers re-home to replica 2 and stay ready, and no member notices: nobody is
//!   closed or reconnected, nothing is missed or seen twice;
//! - a host's cluster link is cut: it cannot renew its lease with the scheduler while its
//!   clients still reach it. It stops serving (1012, then 503) before the scheduler declares it
//!   dead; its rooms are placed again on the other host and every member resumes there with no
//!   loss and no duplicate;
//! - the cut is healed: the host registers again and serves none of the rooms it lost.
//!
//! Then, from every record: no `seq` was ever delivered with two texts, no client saw a gap,
//! and in each room live deliveries never went back to an older placement (no two servers
//! served a room at once). Needs root; prints a loud SKIP (and fails under `CI=true`) when it
//! cannot make namespaces or has no PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::protocol::api::{CreateRoomRequest, MAX_PAGE_LIMIT, RoomTicket};
use berth::protocol::frames::ServerFrame;
use berth::{Backend, ReconnectPolicy, Room, RoomConnection, RoomUpdate, Session, Welcome};
use berth_protocol::cluster::{ServerInfo, ServerList, ServerState};
use berth_store::testing::{TempDatabase, postgres_admin_url};
use berth_testkit::netns::{Host, Lab, Network};
use berth_testkit::{bin_path, eventually, process_alive, signal, temp_dir, write_ticket_keys};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const HEARTBEAT_INTERVAL_MS: u64 = 100;
const HEARTBEAT_TIMEOUT_MS: u64 = 1000;
const SCHEDULER_PORT: u16 = 7070;
const BACKEND_PORT: u16 = 8080;
const SESSION_PORT: u16 = 9000;
const WAIT: Duration = Duration::from_secs(20);
const ROOMS: usize = 4;
/// Room slots of the session servers on `b` and `c`. Replicas place on the fullest server with
/// a free slot (skipping one whose row is locked at that moment, by a heartbeat for example),
/// so unequal capacities put rooms on both hosts (at most two on `b`, the rest on `c`) and
/// leave `c` room for `b`'s when `b` is cut off.
const ROOM_SLOTS: [u32; 2] = [2, 8];
const MEMBERS_PER_ROOM: usize = 3;
/// How often each member sends.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// One deployment at a time: two of them (ten processes, PostgreSQL, chat) on a small machine
/// starve each other past the one-second heartbeat timeout.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Says loudly that the test did not run; fails under CI, where it must.
fn skip(why: &str) {
    eprintln!("\n***** SKIP multihost: {why} *****\n");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the multi-host test must run under CI: {why}");
    }
}

/// The whole deployment. Fields drop in order: processes first, the lab (namespaces) last.
struct Deployment {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    sessions: Vec<(Host, Child)>,
    _backend: Child,
    /// The scheduler replicas, in the order every caller is given them.
    replicas: Vec<Child>,
    relay: CancellationToken,
    _db: TempDatabase,
    data_dir: PathBuf,
    secret: String,
    backend_url: String,
    /// One per replica.
    scheduler_urls: Vec<String>,
    cluster: Network,
    public: Network,
    lab: Lab,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.relay.cancel();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Deployment {
    /// Builds the lab and starts everything; `None` (after saying why) when it cannot run here.
    async fn start() -> Option<Deployment> {
        let admin_url = postgres_admin_url()?;
        let turn = ONE_AT_A_TIME.lock().await;
        let mut lab = match Lab::create() {
            Ok(lab) => lab,
            Err(e) => {
                skip(&format!(
                    "cannot create network namespaces (root needed): {e}"
                ));
                return None;
            }
        };
        let cluster = lab.network();
        let public = lab.network();
        let root_on_cluster = lab.attach_root(cluster);
        lab.attach_root(public);
        let a = lab.host("a", &[cluster, public]);
        let b = lab.host("b", &[cluster, public]);
        let c = lab.host("c", &[cluster, public]);
        let d = lab.host("d", &[cluster]);

        let db = TempDatabase::create(&admin_url).await;
        let relay = CancellationToken::new();
        let db_url = relay_database(&db.url, root_on_cluster, relay.clone()).await;
        // A writer cut off mid-batch holds its room's fence lock until the database aborts its
        // idle transaction (5 s by default); shorter here.
        let sep = if db_url.contains('?') { '&' } else { '?' };
        let db_url =
            format!("{db_url}{sep}options=-c%20idle_in_transaction_session_timeout%3D1000");

        let data_dir = temp_dir("multihost");
        let keys = write_ticket_keys(&data_dir.join("keys"));
        let secret = format!("multihost-{:x}", rand::random::<u64>());
        let replica_addrs =
            [a, d].map(|host| SocketAddr::from((lab.addr(host, cluster), SCHEDULER_PORT)));
        let scheduler_urls: Vec<String> = replica_addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        let scheduler_url = scheduler_urls.join(",");
        let backend_url = format!("http://{}:{BACKEND_PORT}", lab.addr(a, public));

        let spawn = |host: Host, bin: &str, dir: &str, args: Vec<String>| {
            let host_dir = data_dir.join(dir);
            std::fs::create_dir_all(&host_dir).unwrap();
            let mut cmd = lab.command(host, bin_path(bin));
            cmd.args(args)
                .arg("--data-dir")
                .arg(&host_dir)
                .env("BERTH_CLUSTER_SECRET", &secret)
                .env("BERTH_DATABASE_URL", &db_url);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
            cmd.spawn().unwrap()
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let public_key = keys.public.display().to_string();
        let replicas = [(a, "a-scheduler"), (d, "d-scheduler")]
            .into_iter()
            .zip(replica_addrs)
            .map(|((host, dir), addr)| {
                spawn(
                    host,
                    "testkit-scheduler",
                    dir,
                    strings(&[
                        "--listen",
                        &addr.to_string(),
                        "--shared",
                        "true",
                        "--scheduler-url",
                        &scheduler_url,
                        "--ticket-public-key",
                        &public_key,
                        "--max-servers",
                        "0",
                        "--warm-servers",
                        "0",
                        "--heartbeat-interval-ms",
                        &HEARTBEAT_INTERVAL_MS.to_string(),
                        "--heartbeat-timeout-ms",
                        &HEARTBEAT_TIMEOUT_MS.to_string(),
                    ]),
                )
            })
            .collect();
        let backend = spawn(
            a,
            "testkit-backend",
            "a-backend",
            strings(&[
                "--listen",
                &format!("0.0.0.0:{BACKEND_PORT}"),
                "--scheduler-url",
                &scheduler_url,
                "--ticket-private-key",
                &keys.private.display().to_string(),
            ]),
        );
        let sessions = [(b, "b"), (c, "c")]
            .into_iter()
            .zip(ROOM_SLOTS)
            .map(|((host, name), slots)| {
                let child = spawn(
                    host,
                    "testkit-session",
                    name,
                    strings(&[
                        "--listen",
                        &format!("0.0.0.0:{SESSION_PORT}"),
                        "--host",
                        &lab.addr(host, public).to_string(),
                        "--scheduler-url",
                        &scheduler_url,
                        "--ticket-public-key",
                        &public_key,
                        // A cut-off server keeps its members only briefly here: the test
                        // waits for them to move.
                        "--fence-grace-ms",
                        "500",
                        "--rooms",
                        &slots.to_string(),
                    ]),
                );
                (host, child)
            })
            .collect();

        let deployment = Deployment {
            _turn: turn,
            sessions,
            _backend: backend,
            replicas,
            relay,
            _db: db,
            data_dir,
            secret,
            backend_url,
            scheduler_urls,
            cluster,
            public,
            lab,
        };
        eventually(WAIT, || async {
            deployment.ready_servers().await.len() == 2
                && deployment.servers_on(1).await.is_some()
                && deployment.backend().healthz().await.is_ok()
        })
        .await;
        for (host, _) in &deployment.sessions {
            eventually(WAIT, || async {
                deployment
                    .session_health(*host)
                    .await
                    .is_some_and(|h| h["fenced"] == false)
            })
            .await;
        }
        Some(deployment)
    }

    fn backend(&self) -> Backend {
        Backend::new(&self.backend_url)
    }

    /// `GET /v1/servers` on replica `replica`; `None` when it does not answer.
    async fn servers_on(&self, replica: usize) -> Option<Vec<ServerInfo>> {
        let res = reqwest::Client::new()
            .get(format!("{}/v1/servers", self.scheduler_urls[replica]))
            .bearer_auth(&self.secret)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(res.json::<ServerList>().await.ok()?.servers)
    }

    /// `(id, url)` of the servers listed as ready, by the first replica that answers.
    async fn ready_servers(&self) -> Vec<(String, String)> {
        for replica in 0..self.scheduler_urls.len() {
            if let Some(servers) = self.servers_on(replica).await {
                return servers
                    .into_iter()
                    .filter(|s| s.state == ServerState::Ready)
                    .map(|s| (s.id, s.url))
                    .collect();
            }
        }
        Vec::new()
    }

    /// The session host whose public address is in `url`.
    fn host_of_url(&self, url: &str) -> Host {
        self.sessions
            .iter()
            .map(|(h, _)| *h)
            .find(|&h| url.contains(&format!("//{}:", self.lab.addr(h, self.public))))
            .unwrap_or_else(|| panic!("no host serves {url}"))
    }

    /// A session server's `/healthz`, read over the public network.
    async fn session_health(&self, host: Host) -> Option<serde_json::Value> {
        let url = format!(
            "http://{}:{SESSION_PORT}/healthz",
            self.lab.addr(host, self.public)
        );
        let res = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        res.json().await.ok()
    }
}

/// Relays connections from `listen_on` (the root namespace's cluster address) to the database
/// of `url`; returns the URL that goes through the relay.
async fn relay_database(url: &str, listen_on: Ipv4Addr, stop: CancellationToken) -> String {
    let rest = url.split_once('@').expect("a URL with credentials").1;
    let target = rest.split_once('/').map_or(rest, |(hp, _)| hp).to_owned();
    let listener = TcpListener::bind((listen_on, 0)).await.unwrap();
    let relayed = listener.local_addr().unwrap().to_string();
    let to = target.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let (to, stop) = (to.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&to).await else {
                    return;
                };
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            });
        }
    });
    url.replacen(&format!("@{target}"), &format!("@{relayed}"), 1)
}

/// Everything one member saw.
#[derive(Default, Debug)]
struct Record {
    user: String,
    room_id: String,
    /// `(serverId, epoch)` of every `welcome`, in order.
    welcomes: Vec<(String, Option<u64>)>,
    /// `(seq, text, epoch)`: the epoch of the connection that delivered it live, `None` for
    /// messages that came in a `welcome`'s history.
    seen: Vec<(u64, String, Option<u64>)>,
    /// Errors that ended the member early.
    failure: Option<String>,
}

impl Record {
    fn welcome(&mut self, w: &Welcome) {
        self.welcomes.push((w.server_id.clone(), w.epoch));
        for m in &w.history {
            self.seen.push((m.seq, m.text.clone(), None));
        }
    }
}

/// One member: joins `room_id`, sends every [`SEND_EVERY`], reconnects as the client library
/// does, and records everything until `stop`.
async fn member(
    backend: Backend,
    session: Session,
    room_id: String,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) {
    let joined = Room::join(backend, session.clone(), &room_id).await;
    let (mut room, welcome) = match joined {
        Ok(joined) => joined,
        Err(e) => {
            record.lock().unwrap().failure = Some(format!("join: {e}"));
            return;
        }
    };
    room.set_policy(ReconnectPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        max_attempts: Some(200),
    });
    record.lock().unwrap().welcome(&welcome);
    let mut epoch = welcome.epoch;
    let mut sent = 0u64;
    let mut next_send = Instant::now();
    while !stop.is_cancelled() {
        if Instant::now() >= next_send {
            next_send += SEND_EVERY;
            if room.is_connected() {
                let text = format!("{}#{sent}", session.username);
                if room.send(&text, None).await.is_ok() {
                    sent += 1;
                }
            }
        }
        // While reconnecting, `next` must run to completion (a reconnect outlasts the send
        // period); while connected, sending interrupts it.
        let connected = room.is_connected();
        let update = tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(next_send), if connected => continue,
            update = room.next() => update,
        };
        let mut rec = record.lock().unwrap();
        match update {
            Ok(RoomUpdate::Frame(ServerFrame::Message(m))) => rec.seen.push((m.seq, m.text, epoch)),
            Ok(RoomUpdate::Frame(_)) => {}
            Ok(RoomUpdate::Reconnected(w)) => {
                epoch = w.epoch;
                rec.welcome(&w);
            }
            // Not asked for (`report_disconnects` is off).
            Ok(RoomUpdate::Disconnected { .. }) => {}
            Ok(RoomUpdate::Closed { code, reason }) => {
                rec.failure = Some(format!("closed {code:?} {reason}"));
                return;
            }
            Err(e) => {
                rec.failure = Some(format!("gave up: {e}"));
                return;
            }
        }
    }
    let _ = room.close().await;
}

/// The whole stored history of a room, oldest first.
async fn history(backend: &Backend, session: &Session, room_id: &str) -> BTreeMap<u64, String> {
    let mut all = BTreeMap::new();
    let mut before = None;
    loop {
        let page = backend
            .messages(session, room_id, before, Some(MAX_PAGE_LIMIT))
            .await
            .unwrap();
        let Some(first) = page.messages.first() else {
            break;
        };
        before = Some(first.seq);
        for m in page.messages {
            all.insert(m.seq, m.text);
        }
        if !page.has_more {
            break;
        }
    }
    all
}

/// The checks on every record (see the module comment). Returns nothing; panics with the
/// offending record.
fn check_records(records: &[Record], stored: &HashMap<String, BTreeMap<u64, String>>) {
    for r in records {
        assert!(
            r.failure.is_none(),
            "{} in {}: {:?}",
            r.user,
            r.room_id,
            r.failure
        );
        let history = &stored[&r.room_id];
        // Nothing seen twice, no gap: each member's seqs run on one by one.
        for pair in r.seen.windows(2) {
            assert_eq!(
                pair[1].0,
                pair[0].0 + 1,
                "{} in {}: seq {} followed by {}",
                r.user,
                r.room_id,
                pair[0].0,
                pair[1].0
            );
        }
        // Everything seen is stored, under the same seq (so no seq ever had two texts).
        for (seq, text, _) in &r.seen {
            assert_eq!(
                history.get(seq),
                Some(text),
                "{} in {}: seq {seq} was delivered as {text:?}",
                r.user,
                r.room_id
            );
        }
        // Every message the member sent and saw acknowledged made it (covered above), and the
        // member kept up with the room to near its end.
        let last = r.seen.last().map_or(0, |m| m.0);
        let newest = history.keys().next_back().copied().unwrap_or(0);
        assert!(
            newest - last < 50,
            "{} in {} stopped at {last} of {newest}",
            r.user,
            r.room_id
        );
    }
    // Per room, across every client: live deliveries never go back to an older placement, and
    // one epoch is one server.
    let mut by_room: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in records {
        by_room.entry(&r.room_id).or_default().push(r);
    }
    for (room_id, records) in by_room {
        let mut epoch_of_seq: BTreeMap<u64, u64> = BTreeMap::new();
        let mut server_of_epoch: HashMap<u64, &str> = HashMap::new();
        for r in &records {
            for (seq, _, epoch) in &r.seen {
                if let Some(e) = epoch {
                    let previous = epoch_of_seq.insert(*seq, *e);
                    assert!(
                        previous.is_none_or(|p| p == *e),
                        "{room_id}: seq {seq} delivered live under epochs {previous:?} and {e}"
                    );
                }
            }
            for (server, epoch) in &r.welcomes {
                let e = epoch.expect("servers say their epoch");
                let first = *server_of_epoch.entry(e).or_insert(server.as_str());
                assert_eq!(first, server, "{room_id}: epoch {e} on two servers");
            }
        }
        let epochs: Vec<u64> = epoch_of_seq.values().copied().collect();
        assert!(
            epochs.windows(2).all(|w| w[0] <= w[1]),
            "{room_id}: live deliveries interleave placements: {epoch_of_seq:?}"
        );
    }
}

/// Rooms with members chatting in them, every member recording what it saw.
struct Chat {
    backend: Backend,
    owner: Session,
    rooms: Vec<RoomTicket>,
    records: Vec<Arc<Mutex<Record>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Chat {
    /// Creates [`ROOMS`] rooms and starts [`MEMBERS_PER_ROOM`] members in each, chatting from
    /// the root namespace over the public network; returns once each saw a few messages.
    async fn start(d: &Deployment) -> Chat {
        let backend = d.backend();
        let owner = backend.login("owner").await.unwrap();
        let mut rooms = Vec::new();
        for i in 0..ROOMS {
            let req = CreateRoomRequest {
                name: Some(format!("room {i}")),
                public: true,
                private: false,
            };
            rooms.push(backend.create_room(&owner, &req).await.unwrap());
        }
        let mut chat = Chat {
            backend,
            owner,
            rooms,
            records: Vec::new(),
            tasks: Vec::new(),
            stop: CancellationToken::new(),
        };
        for (i, room) in chat.rooms.iter().enumerate() {
            for j in 0..MEMBERS_PER_ROOM {
                let user = format!("u{i}x{j}");
                let session = chat.backend.login(&user).await.unwrap();
                let record = Arc::new(Mutex::new(Record {
                    user,
                    room_id: room.room_id.clone(),
                    ..Record::default()
                }));
                chat.records.push(record.clone());
                chat.tasks.push(tokio::spawn(member(
                    chat.backend.clone(),
                    session,
                    room.room_id.clone(),
                    record,
                    chat.stop.clone(),
                )));
            }
        }
        chat.grown(10).await;
        chat
    }

    /// Waits until every member saw `n` more messages than now.
    async fn grown(&self, n: usize) {
        let counts: Vec<usize> = self
            .records
            .iter()
            .map(|r| r.lock().unwrap().seen.len())
            .collect();
        eventually(WAIT, || {
            let grown = self
                .records
                .iter()
                .zip(&counts)
                .all(|(r, c)| r.lock().unwrap().seen.len() >= c + n);
            async move { grown }
        })
        .await;
    }

    /// Prints every member's record (before a panic).
    fn dump(&self) {
        for r in &self.records {
            let r = r.lock().unwrap();
            eprintln!(
                "{} {} {:?} {:?} last {:?}",
                r.user,
                r.room_id,
                r.welcomes,
                r.failure,
                r.seen.last()
            );
        }
    }

    /// Stops the members, checks every record against the stored history
    /// ([`check_records`]) and returns the records.
    async fn finish(self) -> Vec<Record> {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        let mut stored = HashMap::new();
        for room in &self.rooms {
            stored.insert(
                room.room_id.clone(),
                history(&self.backend, &self.owner, &room.room_id).await,
            );
        }
        let records: Vec<Record> = self
            .records
            .into_iter()
            .map(|r| std::mem::take(&mut *r.lock().unwrap()))
            .collect();
        check_records(&records, &stored);
        records
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_host_is_fenced_its_rooms_move_and_the_healed_host_serves_none_of_them() {
    let Some(d) = Deployment::start().await else {
        return;
    };
    let chat = Chat::start(&d).await;
    let (backend, rooms, records) = (&chat.backend, &chat.rooms, &chat.records);

    // The victim: `b`, whose rooms fit on `c` (see [`ROOM_SLOTS`]). A prober keeps a ticket
    // for one of its rooms.
    let [victim, survivor] = [0, 1].map(|i| d.sessions[i].0);
    let victim_rooms: Vec<String> = rooms
        .iter()
        .filter(|r| d.host_of_url(&r.url) == victim)
        .map(|r| r.room_id.clone())
        .collect();
    assert!(
        !victim_rooms.is_empty() && victim_rooms.len() < rooms.len(),
        "rooms on both hosts: {:?}",
        rooms.iter().map(|r| &r.url).collect::<Vec<_>>()
    );
    let prober = backend.login("prober").await.unwrap();
    let old_ticket = backend
        .lookup_room(&prober, &victim_rooms[0])
        .await
        .unwrap();
    let survivor_id = d
        .ready_servers()
        .await
        .into_iter()
        .find(|(_, url)| d.host_of_url(url) == survivor)
        .unwrap()
        .0;

    // (a) The victim loses the cluster network; its clients still reach it.
    let cut = Instant::now();
    d.lab.cut(victim, d.cluster);
    let moved = |records: &[Arc<Mutex<Record>>]| {
        records.iter().all(|r| {
            let r = r.lock().unwrap();
            !victim_rooms.contains(&r.room_id)
                || r.welcomes.last().is_some_and(|(s, _)| *s == survivor_id)
        })
    };
    while !moved(records) {
        if cut.elapsed() > WAIT {
            chat.dump();
            panic!("the rooms did not move");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let moved_after = cut.elapsed();
    eprintln!(
        "multihost: {} room(s) serving again on the other host {moved_after:?} after the cut \
         (heartbeat timeout {HEARTBEAT_TIMEOUT_MS} ms)",
        victim_rooms.len()
    );
    // The cut-off server serves nothing and admits nobody, though it is reachable.
    let health = d.session_health(victim).await.expect("still reachable");
    assert_eq!(
        (health["fenced"].as_bool(), health["rooms"].as_u64()),
        (Some(true), Some(0)),
        "{health}"
    );
    let refused = RoomConnection::connect_ticket(&old_ticket)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("scheduler_unavailable"), "{refused}");
    // Chat goes on in the moved rooms.
    chat.grown(10).await;

    // (b) Healed: the server registers again, unfenced, and serves none of the rooms it lost.
    d.lab.heal(victim, d.cluster);
    eventually(WAIT, || async {
        d.ready_servers().await.len() == 2
            && d.session_health(victim)
                .await
                .is_some_and(|h| h["fenced"] == false)
    })
    .await;
    let refused = RoomConnection::connect_ticket(&old_ticket)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("wrong_server"), "{refused}");
    for room_id in &victim_rooms {
        let placed = backend.lookup_room(&prober, room_id).await.unwrap();
        assert_eq!(
            placed.server_id, survivor_id,
            "{room_id} stays where it moved"
        );
    }
    chat.grown(10).await;

    let records = chat.finish().await;
    // Members of the moved rooms came back exactly once more, on the survivor; the others
    // were never disturbed.
    for r in &records {
        if victim_rooms.contains(&r.room_id) {
            assert!(r.welcomes.len() >= 2, "{r:?}");
            assert_eq!(r.welcomes.last().unwrap().0, survivor_id);
        } else {
            assert_eq!(
                r.welcomes.len(),
                1,
                "{} in {} reconnected",
                r.user,
                r.room_id
            );
        }
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_replica_stops_no_create_or_lookup_and_drops_no_member() {
    let Some(mut d) = Deployment::start().await else {
        return;
    };
    let chat = Chat::start(&d).await;
    let backend = &chat.backend;
    let hosts: Vec<Host> = chat.rooms.iter().map(|r| d.host_of_url(&r.url)).collect();
    assert!(
        d.sessions.iter().all(|(h, _)| hosts.contains(h)),
        "rooms on both session hosts: {hosts:?}"
    );
    let before = d.servers_on(1).await.expect("replica 2 answers");
    let prober = backend.login("prober").await.unwrap();
    let started = Instant::now();
    backend
        .create_room(&prober, &CreateRoomRequest::default())
        .await
        .unwrap();
    eprintln!(
        "multihost: a create takes {:?} with both replicas up",
        started.elapsed()
    );

    // Replica 1 is first in every caller's list, so the backend and both session servers talk
    // to it (failing over is what this checks). It goes, mid-chat, without a word.
    let replica = d.replicas.remove(0);
    let pid = replica.id().expect("running");
    signal(pid, "KILL");
    let killed = Instant::now();
    eventually(WAIT, || async move { !process_alive(pid) }).await;
    drop(replica);

    // Creates go on through replica 2. One sent on a kept-alive connection to replica 1 can
    // fail (503 `scheduler_unavailable`): the backend does not send a create that may have
    // reached a replica again, so the client tries again, as clients are told to.
    let mut failed = 0;
    let fresh = loop {
        match backend
            .create_room(&prober, &CreateRoomRequest::default())
            .await
        {
            Ok(ticket) => break ticket,
            Err(e) if killed.elapsed() < WAIT && e.code() == Some("scheduler_unavailable") => {
                eprintln!("multihost: a create after the SIGKILL failed: {e}");
                failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a create after the SIGKILL: {e}"),
        }
    };
    let first_create = killed.elapsed();
    eprintln!(
        "multihost: first create {first_create:?} after the SIGKILL of replica 1 \
         ({failed} failed before it)"
    );
    // Each kept-alive connection to replica 1 can cost one create; more time than that is a
    // failover that waits for something.
    assert!(
        first_create < Duration::from_secs(5),
        "creates stalled: {first_create:?}, {failed} failed"
    );
    for _ in 0..2 {
        let started = Instant::now();
        backend
            .create_room(&prober, &CreateRoomRequest::default())
            .await
            .expect("creates keep working");
        eprintln!(
            "multihost: a create takes {:?} with replica 2 alone",
            started.elapsed()
        );
    }
    // Lookups too, and they find every room where it was: nothing moved.
    for room in &chat.rooms {
        let placed = backend.lookup_room(&prober, &room.room_id).await.unwrap();
        assert_eq!(
            (&placed.server_id, &placed.url),
            (&room.server_id, &room.url),
            "{} moved",
            room.room_id
        );
    }
    let again = backend.lookup_room(&prober, &fresh.room_id).await.unwrap();
    assert_eq!(again.server_id, fresh.server_id);
    let (mut conn, _) = RoomConnection::connect_ticket(&fresh).await.unwrap();
    conn.send("after the kill", None).await.unwrap();

    // Past the heartbeat timeout, replica 2 lists both session servers ready and heartbeating
    // (to it, since nobody else is left).
    tokio::time::sleep(Duration::from_millis(2 * HEARTBEAT_TIMEOUT_MS)).await;
    let after = d.servers_on(0).await;
    assert!(after.is_none(), "replica 1 is gone");
    let after = d.servers_on(1).await.expect("replica 2 answers");
    for server in before.iter().filter(|s| s.state == ServerState::Ready) {
        let now = after
            .iter()
            .find(|s| s.id == server.id)
            .unwrap_or_else(|| panic!("{} no longer listed: {after:?}", server.id));
        assert_eq!(now.state, ServerState::Ready, "{now:?}");
        // Younger than a session server's lease (3/4 of the timeout): one that stopped
        // heartbeating for that long would be fenced.
        assert!(
            now.last_heartbeat_ms_ago < HEARTBEAT_TIMEOUT_MS * 3 / 4,
            "re-homed and heartbeating: {now:?}"
        );
    }
    assert_eq!(
        after
            .iter()
            .filter(|s| s.state == ServerState::Ready)
            .count(),
        2,
        "{after:?}"
    );
    for (host, _) in &d.sessions {
        let health = d.session_health(*host).await.expect("reachable");
        assert_eq!(health["fenced"].as_bool(), Some(false), "{health}");
    }
    chat.grown(10).await;

    // Nobody noticed: one welcome each, and the records check out.
    let records = chat.finish().await;
    for r in &records {
        assert_eq!(
            r.welcomes.len(),
            1,
            "{} in {} reconnected: {:?}",
            r.user,
            r.room_id,
            r.welcomes
        );
    }
    let _ = conn.close().await;
    drop(d);
}
