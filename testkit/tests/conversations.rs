//! Private rooms, direct messages, read state and "my rooms" end to end, on SQLite and (when
//! `BERTH_TEST_DATABASE_URL` is set, always under CI) PostgreSQL.
//!
//! - A non-member is refused everywhere: lookup, history, adding members, and at the session
//!   server itself with a ticket for the room that names it (the server checks membership in
//!   the store, so a ticket alone never lets a non-member in).
//! - `POST /api/dms` gives one room under 20 concurrent requests from both sides.
//! - Read positions and unread counts hold across two devices of one user and across a restart
//!   of the whole cluster; they never move backwards.
//! - `/api/me/rooms` lists rooms by most recent activity.

use std::time::Duration;

use berth::protocol::api::{CreateRoomRequest, MyRoom};
use berth::protocol::claims::TicketClaims;
use berth::protocol::frames::{ReadPosition, ServerFrame};
use berth::{Backend, ClientError, RoomConnection, RoomEvent, Session};
use berth_store::testing::{TempDatabase, postgres_admin_url};
use berth_testkit::{Cluster, ClusterOptions, eventually, eventually_some, mint_ticket};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery";

/// The store a test runs against: SQLite, or a fresh PostgreSQL database.
async fn database(postgres: bool) -> Option<Option<TempDatabase>> {
    if !postgres {
        return Some(None);
    }
    let admin = postgres_admin_url()?;
    Some(Some(TempDatabase::create(&admin).await))
}

async fn cluster(db: &Option<TempDatabase>) -> Cluster {
    Cluster::start(ClusterOptions {
        backend_args: ["--argon2-memory-kib", "64", "--argon2-iterations", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        database_url: db.as_ref().map(|d| d.url.clone()),
        ..ClusterOptions::default()
    })
    .await
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
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
    )*};
}

both_stores!(
    non_members_are_refused_everywhere,
    direct_messages_are_one_room_under_concurrent_requests,
    read_positions_hold_across_devices_and_a_cluster_restart,
    my_rooms_are_ordered_by_recent_activity,
);

fn code(e: &ClientError) -> (Option<u16>, Option<&str>) {
    (e.status(), e.code())
}

async fn register(backend: &Backend, name: &str) -> Session {
    backend.register(name, PASSWORD).await.unwrap()
}

fn private_room(name: &str) -> CreateRoomRequest {
    CreateRoomRequest {
        name: Some(name.into()),
        public: false,
        private: true,
    }
}

/// The next frame that is not presence, within `WAIT`.
async fn next_frame(conn: &mut RoomConnection) -> ServerFrame {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Joined { .. } | ServerFrame::Left { .. }) => {}
            RoomEvent::Frame(frame) => return frame,
            RoomEvent::Closed { code, reason } => panic!("closed {code:?}: {reason}"),
        }
    }
}

/// Sends `text` and waits for its echo; answers its `seq`.
async fn send(conn: &mut RoomConnection, text: &str) -> u64 {
    conn.send(text, None).await.unwrap();
    loop {
        if let ServerFrame::Message(m) = next_frame(conn).await
            && m.text == text
        {
            return m.seq;
        }
    }
}

async fn my_room(backend: &Backend, session: &Session, room_id: &str) -> Option<MyRoom> {
    backend
        .my_rooms(session)
        .await
        .unwrap()
        .rooms
        .into_iter()
        .find(|r| r.room_id == room_id)
}

/// Waits until `session`'s entry for `room_id` has this `(lastSeq, readSeq, unread)`.
async fn wait_counts(
    backend: &Backend,
    session: &Session,
    room_id: &str,
    expected: (u64, u64, u64),
) {
    eventually(WAIT, || async {
        my_room(backend, session, room_id)
            .await
            .is_some_and(|r| (r.last_seq, r.read_seq, r.unread) == expected)
    })
    .await;
}

async fn non_members_are_refused_everywhere(postgres: bool) {
    let Some(db) = database(postgres).await else {
        return;
    };
    let cluster = cluster(&db).await;
    let backend = cluster.backend();
    let alice = register(&backend, "alice").await;
    let bob = register(&backend, "bob").await;
    let mallory = register(&backend, "mallory").await;

    let room = backend
        .create_room(&alice, &private_room("secret"))
        .await
        .unwrap();
    let (mut conn, welcome) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();
    assert_eq!(welcome.you.username, "alice");
    send(&mut conn, "for members only").await;

    // Lookup, history and adding members: 403 not_a_member.
    let forbidden = (Some(403), Some("not_a_member"));
    let e = backend
        .lookup_room(&mallory, &room.room_id)
        .await
        .unwrap_err();
    assert_eq!(code(&e), forbidden, "{e}");
    let e = backend
        .messages(&mallory, &room.room_id, None, None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), forbidden, "{e}");
    let e = backend
        .add_member(&mallory, &room.room_id, "mallory")
        .await
        .unwrap_err();
    assert_eq!(code(&e), forbidden, "{e}");
    // A private room is never listed.
    assert!(
        !backend
            .list_rooms()
            .await
            .unwrap()
            .rooms
            .iter()
            .any(|r| r.room_id == room.room_id)
    );

    // A ticket for the room naming mallory (signed with the real key, for the right server and
    // placement, as a backend bug or a leaked key would give her): the session server checks
    // membership itself and refuses it before the upgrade.
    let now = berth_testkit::protocol::now_secs();
    let forged = mint_ticket(
        &cluster.ticket_keys(),
        &TicketClaims {
            sub: mallory.user_id.clone(),
            name: mallory.username.clone(),
            room: room.room_id.clone(),
            aud: room.server_id.clone(),
            epoch: welcome.epoch.unwrap_or(0),
            iat: now,
            exp: now + 60,
            jti: berth_testkit::protocol::claims::new_ticket_id(),
        },
    );
    let e = RoomConnection::connect(&room.url, &forged)
        .await
        .unwrap_err();
    assert_eq!(code(&e), forbidden, "{e}");
    // Alice's own ticket, stolen by mallory, names alice: whoever holds it is alice, never
    // mallory, so it cannot make mallory a member; and it is short-lived (a minute).
    assert_eq!(room.token.split('.').count(), 3);

    // Unknown accounts are 404; a member adds bob, who then gets in.
    let e = backend
        .add_member(&alice, &room.room_id, "nobody")
        .await
        .unwrap_err();
    assert_eq!(code(&e), (Some(404), Some("user_not_found")), "{e}");
    let e = backend.lookup_room(&bob, &room.room_id).await.unwrap_err();
    assert_eq!(code(&e), forbidden, "{e}");
    backend
        .add_member(&alice, &room.room_id, "Bob")
        .await
        .unwrap();
    let page = backend
        .messages(&bob, &room.room_id, None, None)
        .await
        .unwrap();
    assert_eq!(page.messages[0].text, "for members only");
    let ticket = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    let (bob_conn, welcome) = RoomConnection::connect(&ticket.url, &ticket.token)
        .await
        .unwrap();
    assert_eq!(welcome.history.len(), 1);
    // Any member may add members: bob adds mallory, who then gets in.
    backend
        .add_member(&bob, &room.room_id, "mallory")
        .await
        .unwrap();
    backend.lookup_room(&mallory, &room.room_id).await.unwrap();
    // Public rooms stay open to anyone; they have no members to add.
    let open = backend
        .create_room(
            &alice,
            &CreateRoomRequest {
                name: Some("open".into()),
                public: true,
                private: false,
            },
        )
        .await
        .unwrap();
    backend.lookup_room(&mallory, &open.room_id).await.unwrap();
    let e = backend
        .add_member(&alice, &open.room_id, "bob")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    bob_conn.close().await.unwrap();
    conn.close().await.unwrap();
    cluster.stop().await;
}

async fn direct_messages_are_one_room_under_concurrent_requests(postgres: bool) {
    let Some(db) = database(postgres).await else {
        return;
    };
    let cluster = cluster(&db).await;
    let backend = cluster.backend();
    let alice = register(&backend, "alice").await;
    let bob = register(&backend, "bob").await;

    // 20 first requests at once, 10 from each side.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let backend = backend.clone();
        let (me, other) = if i % 2 == 0 {
            (alice.clone(), "bob")
        } else {
            (bob.clone(), "alice")
        };
        tasks.spawn(async move { backend.open_dm(&me, other).await });
    }
    let mut rooms = Vec::new();
    while let Some(done) = tasks.join_next().await {
        rooms.push(done.unwrap().unwrap());
    }
    let first = rooms[0].ticket.room_id.clone();
    assert!(
        rooms.iter().all(|r| r.ticket.room_id == first),
        "one room for the pair: {:?}",
        rooms.iter().map(|r| &r.ticket.room_id).collect::<Vec<_>>()
    );
    for r in &rooms {
        assert!(r.dm.username == "alice" || r.dm.username == "bob");
        assert_eq!(r.ticket.name, r.dm.username);
    }
    // Each sees the DM once, named after the other person.
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        let mine = backend.my_rooms(me).await.unwrap().rooms;
        let dms: Vec<&MyRoom> = mine.iter().filter(|r| r.dm.is_some()).collect();
        assert_eq!(dms.len(), 1, "{mine:?}");
        assert_eq!(dms[0].room_id, first);
        assert!(dms[0].private);
        assert_eq!(dms[0].dm.as_ref().unwrap().user_id, other.user_id);
        assert_eq!(dms[0].name, other.username);
    }
    // Both get in; a third account does not.
    let (mut a, _) = RoomConnection::connect_ticket(&rooms[0].ticket)
        .await
        .unwrap();
    send(&mut a, "hi bob").await;
    let carol = register(&backend, "carol").await;
    let e = backend.lookup_room(&carol, &first).await.unwrap_err();
    assert_eq!(code(&e), (Some(403), Some("not_a_member")));
    let e = backend
        .add_member(&alice, &first, "carol")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "a DM stays between two: {e}");

    // Oneself: 400; unknown: 404; guests neither start nor receive DMs.
    let e = backend.open_dm(&alice, "ALICE").await.unwrap_err();
    assert_eq!(code(&e), (Some(400), Some("invalid_request")));
    let e = backend.open_dm(&alice, "nobody").await.unwrap_err();
    assert_eq!(code(&e), (Some(404), Some("user_not_found")));
    let guest = backend.login("visitor").await.unwrap();
    let e = backend.open_dm(&guest, "alice").await.unwrap_err();
    assert_eq!(code(&e), (Some(403), Some("account_required")));
    let e = backend.open_dm(&alice, "visitor").await.unwrap_err();
    assert_eq!(code(&e), (Some(404), Some("user_not_found")));
    a.close().await.unwrap();
    cluster.stop().await;
}

async fn read_positions_hold_across_devices_and_a_cluster_restart(postgres: bool) {
    let Some(db) = database(postgres).await else {
        return;
    };
    let mut cluster = cluster(&db).await;
    let backend = cluster.backend();
    let alice = register(&backend, "alice").await;
    let bob = register(&backend, "bob").await;
    let dm = backend.open_dm(&alice, "bob").await.unwrap();
    let room_id = dm.ticket.room_id.clone();
    let (mut a, _) = RoomConnection::connect_ticket(&dm.ticket).await.unwrap();
    for i in 1..=3 {
        assert_eq!(send(&mut a, &format!("m{i}")).await, i);
    }
    // Bob has not read anything; alice has read her own messages.
    wait_counts(&backend, &bob, &room_id, (3, 0, 3)).await;
    wait_counts(&backend, &alice, &room_id, (3, 3, 0)).await;

    // Bob's two devices.
    let t1 = backend.lookup_room(&bob, &room_id).await.unwrap();
    let (mut phone, welcome) = RoomConnection::connect_ticket(&t1).await.unwrap();
    assert!(
        welcome.reads.contains(&ReadPosition {
            user_id: alice.user_id.clone(),
            seq: 3
        }),
        "{:?}",
        welcome.reads
    );
    let t2 = backend.lookup_room(&bob, &room_id).await.unwrap();
    let (mut laptop, _) = RoomConnection::connect_ticket(&t2).await.unwrap();

    phone.send_read(2).await.unwrap();
    let expected = ServerFrame::Read {
        user_id: bob.user_id.clone(),
        seq: 2,
    };
    assert_eq!(next_frame(&mut laptop).await, expected, "the other device");
    assert_eq!(next_frame(&mut a).await, expected, "the other person");
    wait_counts(&backend, &bob, &room_id, (3, 2, 1)).await;

    // Never backwards: an older position changes nothing and tells nobody.
    laptop.send_read(1).await.unwrap();
    laptop.send_read(99).await.unwrap(); // clamped to the last message
    let expected = ServerFrame::Read {
        user_id: bob.user_id.clone(),
        seq: 3,
    };
    assert_eq!(next_frame(&mut phone).await, expected);
    assert_eq!(next_frame(&mut a).await, expected);
    wait_counts(&backend, &bob, &room_id, (3, 3, 0)).await;

    // Bob's own message moves his position; alice has one unread.
    assert_eq!(send(&mut phone, "hello alice").await, 4);
    wait_counts(&backend, &bob, &room_id, (4, 4, 0)).await;
    wait_counts(&backend, &alice, &room_id, (4, 3, 1)).await;
    for c in [a, phone, laptop] {
        c.close().await.unwrap();
    }

    // The whole cluster (scheduler and session servers) goes away and comes back.
    cluster.restart_scheduler().await;
    let ticket = eventually_some(WAIT, || async {
        backend.lookup_room(&alice, &room_id).await.ok()
    })
    .await;
    wait_counts(&backend, &bob, &room_id, (4, 4, 0)).await;
    wait_counts(&backend, &alice, &room_id, (4, 3, 1)).await;
    let (mut a, welcome) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    let mut reads = welcome.reads.clone();
    reads.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    let mut expected = vec![
        ReadPosition {
            user_id: alice.user_id.clone(),
            seq: 3,
        },
        ReadPosition {
            user_id: bob.user_id.clone(),
            seq: 4,
        },
    ];
    expected.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(reads, expected);
    a.send_read(4).await.unwrap();
    wait_counts(&backend, &alice, &room_id, (4, 4, 0)).await;
    a.close().await.unwrap();
    cluster.stop().await;
}

async fn my_rooms_are_ordered_by_recent_activity(postgres: bool) {
    let Some(db) = database(postgres).await else {
        return;
    };
    let cluster = cluster(&db).await;
    let backend = cluster.backend();
    let alice = register(&backend, "alice").await;
    let bob = register(&backend, "bob").await;
    let mut tickets = Vec::new();
    for name in ["first", "second", "third"] {
        let req = CreateRoomRequest {
            name: Some(name.into()),
            public: true,
            private: false,
        };
        tickets.push(backend.create_room(&alice, &req).await.unwrap());
        // Creation times must differ for the order to be defined.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let names = |rooms: Vec<MyRoom>| rooms.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(
        names(backend.my_rooms(&alice).await.unwrap().rooms),
        ["third", "second", "first"]
    );
    // A message makes "first" the most recent.
    let (mut conn, _) = RoomConnection::connect_ticket(&tickets[0]).await.unwrap();
    send(&mut conn, "news").await;
    eventually(WAIT, || async {
        names(backend.my_rooms(&alice).await.unwrap().rooms) == ["first", "third", "second"]
    })
    .await;
    // Joining a room makes it one of bob's rooms, with what he has not read.
    assert!(backend.my_rooms(&bob).await.unwrap().rooms.is_empty());
    let ticket = backend
        .lookup_room(&bob, &tickets[0].room_id)
        .await
        .unwrap();
    let (bob_conn, _) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    wait_counts(&backend, &bob, &tickets[0].room_id, (1, 0, 1)).await;
    bob_conn.close().await.unwrap();
    conn.close().await.unwrap();
    cluster.stop().await;
}
