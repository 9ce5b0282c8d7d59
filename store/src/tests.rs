//! The same behaviour checked against both stores: SQLite always, PostgreSQL when
//! `BERTH_TEST_DATABASE_URL` is set (and always under CI, see [`crate::testing`]).

use std::sync::Arc;

use super::*;
use crate::testing::{TempDatabase, postgres_admin_url};

fn msg(seq: u64, text: &str) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        seq,
        user_id: "u-a".into(),
        username: "alice".into(),
        text: text.into(),
        ts: "2026-01-01T00:00:00.000Z".into(),
        client_id: seq.is_multiple_of(2).then(|| format!("c{seq}")),
    })
}

fn append(room: &str, epoch: u64, seqs: std::ops::RangeInclusive<u64>) -> RoomAppend {
    RoomAppend {
        room_id: Arc::from(room),
        epoch,
        messages: seqs.map(|s| msg(s, &format!("m{s}"))).collect(),
        reads: Vec::new(),
    }
}

fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn temp_sqlite() -> PathBuf {
    std::env::temp_dir()
        .join(format!(
            "berth-store-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ))
        .join(SQLITE_FILE)
}

/// Every behaviour of the interface, on a fresh store.
async fn conformance(store: Store) {
    // A new room: nothing stored, fence claimed.
    let opened = store.open_room("r-1", 10, 100).await.unwrap();
    assert_eq!(opened, OpenedRoom::default());

    // One batch across rooms.
    let results = store
        .append(&[append("r-1", 10, 1..=3), append("r-2", 1, 1..=2)])
        .await;
    assert_eq!(results, vec![Ok(()), Ok(())]);
    let results = store.append(&[append("r-1", 10, 4..=120)]).await;
    assert_eq!(results, vec![Ok(())]);

    // Reopening loads the last seq and the newest messages, oldest first, every field intact.
    let opened = store.open_room("r-1", 11, 5).await.unwrap();
    assert_eq!(opened.last_seq, 120);
    assert_eq!(seqs(&opened.recent), [116, 117, 118, 119, 120]);
    assert_eq!(opened.recent[4], *msg(120, "m120"));
    assert_eq!(opened.recent[3].client_id, None);

    // The old placement (epoch 10) is fenced off; the new one (11) writes; r-2 is not affected
    // by r-1's fence in the same batch.
    let results = store
        .append(&[append("r-1", 10, 121..=121), append("r-2", 1, 3..=3)])
        .await;
    assert_eq!(results, vec![Err(StoreError::Fenced("r-1".into())), Ok(())]);
    assert_eq!(
        store.append(&[append("r-1", 11, 121..=121)]).await,
        vec![Ok(())]
    );
    // An older epoch cannot open the room again either.
    assert_eq!(
        store.open_room("r-1", 10, 5).await,
        Err(StoreError::Fenced("r-1".into()))
    );

    // A duplicate seq fails its own room only.
    let results = store
        .append(&[append("r-2", 1, 3..=4), append("r-3", 1, 1..=1)])
        .await;
    assert_eq!(
        results,
        vec![Err(StoreError::Conflict("r-2".into())), Ok(())]
    );
    assert_eq!(
        seqs(&store.messages_between("r-2", 0, 100, 100).await.unwrap()),
        [1, 2, 3]
    );

    // Resume reads: the newest `limit` in the range.
    assert_eq!(
        seqs(&store.messages_between("r-1", 100, 121, 1000).await.unwrap()),
        (101..=121).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&store.messages_between("r-1", 100, 110, 3).await.unwrap()),
        [108, 109, 110]
    );
    assert!(
        store
            .messages_between("r-1", 121, 121, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Paging back.
    let page = store.messages_before("r-1", None, 50).await.unwrap();
    assert_eq!(
        (
            page.messages.first().unwrap().seq,
            page.messages.last().unwrap().seq,
            page.has_more
        ),
        (72, 121, true)
    );
    let page = store.messages_before("r-1", Some(72), 50).await.unwrap();
    assert_eq!(
        (
            page.messages.first().unwrap().seq,
            page.messages.last().unwrap().seq,
            page.has_more
        ),
        (22, 71, true)
    );
    let page = store.messages_before("r-1", Some(22), 50).await.unwrap();
    assert_eq!(
        (seqs(&page.messages), page.has_more),
        ((1..=21).collect::<Vec<_>>(), false)
    );
    let page = store.messages_before("r-1", Some(1), 50).await.unwrap();
    assert_eq!(page, Page::default());
    assert_eq!(
        store.messages_before("r-unknown", None, 50).await.unwrap(),
        Page::default()
    );

    // Room metadata.
    assert_eq!(store.room("r-1").await.unwrap(), None);
    let meta = RoomMeta {
        room_id: "r-1".into(),
        name: "lounge ☕".into(),
        public: true,
        private: false,
        created_by: Some("u-a".into()),
        created_at_ms: 1_700_000_000_000,
    };
    store.create_room(&meta).await.unwrap();
    // Creating again keeps the first record.
    store
        .create_room(&RoomMeta {
            name: "other".into(),
            ..meta.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.room("r-1").await.unwrap(), Some(meta.clone()));
    let private = RoomMeta {
        room_id: "r-p".into(),
        public: false,
        created_by: None,
        ..meta.clone()
    };
    store.create_room(&private).await.unwrap();
    let newer = RoomMeta {
        room_id: "r-n".into(),
        created_at_ms: meta.created_at_ms + 1,
        ..meta.clone()
    };
    store.create_room(&newer).await.unwrap();
    let public: Vec<String> = store
        .public_rooms(10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.room_id)
        .collect();
    assert_eq!(public, ["r-n", "r-1"]);
}

/// Accounts: names unique case-insensitively with their case kept, looked up by name and id,
/// password changes compare-and-set on the token generation.
async fn accounts(store: Store) {
    let bob = Account {
        user_id: "a-bob1".into(),
        username: "Bob".into(),
        password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        token_gen: 1,
        created_at_ms: 1_700_000_000_000,
    };
    assert_eq!(store.account_by_name("bob").await.unwrap(), None);
    store.create_account(&bob).await.unwrap();
    assert_eq!(
        store.account_by_name("BOB").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        store.account_by_id("a-bob1").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(store.account_by_id("a-none").await.unwrap(), None);
    // Another case of the same name is the same name.
    let twin = Account {
        user_id: "a-bob2".into(),
        username: "bOb".into(),
        ..bob.clone()
    };
    assert_eq!(
        store.create_account(&twin).await,
        Err(StoreError::UsernameTaken)
    );
    assert!(
        !format!("{bob:?}").contains("argon2"),
        "Debug hides the hash"
    );

    // A change under the current generation wins once; a stale one loses.
    assert_eq!(
        store
            .set_password("a-bob1", "$argon2id$new", 1)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        store
            .set_password("a-bob1", "$argon2id$x", 1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .set_password("a-none", "$argon2id$x", 0)
            .await
            .unwrap(),
        None
    );
    let now = store.account_by_name("bob").await.unwrap().unwrap();
    assert_eq!(
        (now.password_hash.as_str(), now.token_gen),
        ("$argon2id$new", 2)
    );
}

#[tokio::test]
async fn sqlite_accounts() {
    let path = temp_sqlite();
    accounts(Store::sqlite(path.clone()).await.unwrap()).await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn postgres_accounts() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let db = TempDatabase::create(&admin).await;
    accounts(Store::postgres(&db.url).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_conformance() {
    let path = temp_sqlite();
    conformance(Store::sqlite(path.clone()).await.unwrap()).await;
    // A second process's view of the same file sees it all.
    let other = Store::sqlite(path.clone()).await.unwrap();
    assert_eq!(other.open_room("r-2", 1, 0).await.unwrap().last_seq, 3);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn postgres_conformance() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let db = TempDatabase::create(&admin).await;
    conformance(Store::postgres(&db.url).await.unwrap()).await;
    // Opening again (schema already there) works, and sees the data.
    let other = Store::postgres(&db.url).await.unwrap();
    assert_eq!(other.open_room("r-2", 1, 0).await.unwrap().last_seq, 3);
}

#[tokio::test]
async fn sqlite_locked_by_another_writer_is_unavailable() {
    let path = temp_sqlite();
    let store = Store::sqlite(path.clone()).await.unwrap();
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = std::time::Instant::now();
    let results = store.append(&[append("r-1", 1, 1..=1)]).await;
    assert!(
        matches!(&results[..], [Err(StoreError::Unavailable(_))]),
        "{results:?}"
    );
    assert!(
        started.elapsed() >= sqlite::BUSY_TIMEOUT / 2,
        "it waited for the lock first"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(store.append(&[append("r-1", 1, 1..=1)]).await, vec![Ok(())]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn postgres_read_only_is_unavailable_then_recovers() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let db = TempDatabase::create(&admin).await;
    let store = Store::postgres(&db.url).await.unwrap();
    assert_eq!(store.append(&[append("r-1", 1, 1..=1)]).await, vec![Ok(())]);
    let kick = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    db.admin_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on; {kick}",
        db.name
    ))
    .await;
    let results = store.append(&[append("r-1", 1, 2..=2)]).await;
    assert!(
        matches!(&results[..], [Err(StoreError::Unavailable(_))]),
        "{results:?}"
    );
    // Still refused on the fresh connection (read-only), with a clear reason.
    let results = store.append(&[append("r-1", 1, 2..=2)]).await;
    match &results[..] {
        [Err(StoreError::Unavailable(why))] => assert!(why.contains("read-only"), "{why}"),
        other => panic!("{other:?}"),
    }
    db.admin_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = off; {kick}",
        db.name
    ))
    .await;
    // The first calls may meet the terminated connections; then it reconnects and works.
    let mut written = false;
    for _ in 0..3 {
        if store.append(&[append("r-1", 1, 2..=2)]).await == vec![Ok(())] {
            written = true;
            break;
        }
    }
    assert!(written, "the store came back");
    let mut stored = Vec::new();
    for _ in 0..3 {
        if let Ok(m) = store.messages_between("r-1", 0, 10, 10).await {
            stored = seqs(&m);
            break;
        }
    }
    assert_eq!(stored, [1, 2]);
}

#[test]
fn flags_choose_the_store() {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        store: StoreArgs,
    }
    let parse =
        |args: &[&str]| Flags::parse_from(std::iter::once("x").chain(args.iter().copied())).store;
    assert_eq!(parse(&[]).kind(false), Ok(StoreKind::Sqlite));
    assert_eq!(parse(&[]).kind(true), Ok(StoreKind::None));
    assert_eq!(
        parse(&["--database-url", "postgres://h/db"]).kind(true),
        Ok(StoreKind::Postgres)
    );
    assert_eq!(
        parse(&["--store", "none", "--database-url", "postgres://h/db"]).kind(false),
        Ok(StoreKind::None)
    );
    assert!(parse(&["--store", "postgres"]).kind(false).is_err());
    let debug = format!(
        "{:?}",
        parse(&["--database-url", "postgres://u:hunter2@h/db"])
    );
    assert!(
        !debug.contains("hunter2") && debug.contains("u:***@h/db"),
        "{debug}"
    );
}

/// Membership, read positions (forward only, written with the append batch, senders' own
/// messages included), direct messages (one room per pair) and "my rooms" (ordering, counts).
async fn conversations(store: Store) {
    use crate::conversations::RoomAccess;
    let room = |id: &str, private: bool, by: &str, at: u64| RoomMeta {
        room_id: id.into(),
        name: id.into(),
        public: !private,
        private,
        created_by: Some(by.into()),
        created_at_ms: at,
    };
    store
        .create_room(&room("r-pub", false, "a-ann", 1))
        .await
        .unwrap();
    store
        .create_room(&room("r-priv", true, "a-ann", 2))
        .await
        .unwrap();
    assert!(store.room("r-priv").await.unwrap().unwrap().private);
    assert_eq!(
        store.room_access("r-priv", "a-ann").await.unwrap(),
        Some(RoomAccess {
            private: true,
            member: true
        }),
        "the creator is the first member"
    );
    assert_eq!(
        store.room_access("r-priv", "a-bob").await.unwrap(),
        Some(RoomAccess {
            private: true,
            member: false
        })
    );
    assert_eq!(store.room_access("r-none", "a-bob").await.unwrap(), None);
    assert!(store.add_member("r-priv", "a-bob").await.unwrap());
    assert!(
        !store.add_member("r-priv", "a-bob").await.unwrap(),
        "added once"
    );
    assert!(
        store
            .room_access("r-priv", "a-bob")
            .await
            .unwrap()
            .unwrap()
            .member
    );

    // Bob reads 2 in the transaction of ann's messages, then an older 1 is ignored (never
    // backwards). Ann's position moves with the marks her messages imply, written apart.
    store.open_room("r-priv", 1, 10).await.unwrap();
    let mut batch = append("r-priv", 1, 1..=3);
    for m in &mut batch.messages {
        Arc::make_mut(m).user_id = "a-ann".into();
    }
    batch.reads = vec![(Arc::from("a-bob"), 2)];
    assert_eq!(
        store.append(std::slice::from_ref(&batch)).await,
        vec![Ok(())]
    );
    let only_reads = RoomAppend {
        room_id: Arc::from("r-priv"),
        epoch: 1,
        messages: Vec::new(),
        reads: vec![(Arc::from("a-bob"), 1), (Arc::from("a-bob"), 1)],
    };
    assert_eq!(store.append(&[only_reads]).await, vec![Ok(())]);
    let mut reads = store.read_positions("r-priv", 10).await.unwrap();
    reads.sort();
    assert_eq!(reads, [("a-bob".to_owned(), 2)]);
    let mut marks = Marks::default();
    marks.add_sent(&batch);
    let mut older = batch.clone();
    older.messages.truncate(1);
    marks.add_sent(&older);
    assert_eq!(
        marks.activity.get("r-priv"),
        Some(&3),
        "the higher seq wins"
    );
    store.write_marks(&marks).await.unwrap();
    store.write_marks(&Marks::default()).await.unwrap();
    let mut reads = store.read_positions("r-priv", 10).await.unwrap();
    reads.sort();
    assert_eq!(reads, [("a-ann".to_owned(), 3), ("a-bob".to_owned(), 2)]);

    // A direct message: one room per pair whoever asks, both members.
    let first = store.open_dm("a-bob", "a-ann", "d-one").await.unwrap();
    let second = store.open_dm("a-ann", "a-bob", "d-two").await.unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("d-one", "d-one"));
    let dm = store.room("d-one").await.unwrap().unwrap();
    assert!(dm.private && !dm.public);
    assert!(
        store
            .room_access("d-one", "a-ann")
            .await
            .unwrap()
            .unwrap()
            .member
    );

    // Bob's rooms: the DM (newest), then r-priv (activity from its messages is newer than
    // any creation time in ms since 1970 + 2).
    let mine = store.my_rooms("a-bob", 100).await.unwrap();
    let ids: Vec<&str> = mine.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{mine:?}");
    let priv_row = mine.iter().find(|r| r.room_id == "r-priv").unwrap();
    assert_eq!((priv_row.last_seq, priv_row.read_seq), (3, 2));
    let dm_row = mine.iter().find(|r| r.room_id == "d-one").unwrap();
    assert_eq!(dm_row.dm.as_ref().map(|d| d.0.as_str()), Some("a-ann"));
    assert!(mine[0].activity_ms >= mine[1].activity_ms);
    // Activity orders: a message in r-pub makes it ann's most recent room.
    store.open_room("r-pub", 1, 10).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let pub_batch = append("r-pub", 1, 1..=1);
    assert_eq!(
        store.append(std::slice::from_ref(&pub_batch)).await,
        vec![Ok(())]
    );
    let mut marks = Marks::default();
    marks.add_sent(&pub_batch);
    store.write_marks(&marks).await.unwrap();
    let ann = store.my_rooms("a-ann", 100).await.unwrap();
    assert_eq!(ann[0].room_id, "r-pub", "{ann:?}");
    assert_eq!(ann.len(), 3);
}

#[tokio::test]
async fn sqlite_conversations() {
    let path = temp_sqlite();
    conversations(Store::sqlite(path.clone()).await.unwrap()).await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn postgres_conversations() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let db = TempDatabase::create(&admin).await;
    conversations(Store::postgres(&db.url).await.unwrap()).await;
}

/// Rooms of the user measured by the scale test.
const SCALE_ROOMS: i64 = 5000;

/// Seeds one user with [`SCALE_ROOMS`] rooms (one in five a DM with its own account), ten other
/// members per room and some activity: `(table, statement)` pairs in SQL both stores run, over
/// the numbers `1..=SCALE_ROOMS` as `i` (`{n}` is the store's number source).
fn scale_seed(n: &str) -> Vec<String> {
    [
        "INSERT INTO berth_rooms (room_id, name, public, private, created_by, created_at_ms)
         SELECT 'r-' || i, 'room ' || i, false, true, 'a-me', i FROM {n}",
        "INSERT INTO berth_members (user_id, room_id, read_seq, added_at_ms)
         SELECT 'a-me', 'r-' || i, i % 7, i FROM {n}",
        "INSERT INTO berth_members (user_id, room_id, read_seq, added_at_ms)
         SELECT 'a-o' || (i % 997 + k * 1000), 'r-' || i, 0, i
         FROM {n} CROSS JOIN (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
                              UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8
                              UNION ALL SELECT 9 UNION ALL SELECT 10) AS ks",
        "INSERT INTO berth_room_activity (room_id, last_seq, last_ms)
         SELECT 'r-' || i, i % 50 + 10, 1000000 + (i * 7919) % 5000 FROM {n}",
        "INSERT INTO berth_accounts (user_id, username, username_key, password_hash, token_gen, created_at_ms)
         SELECT 'a-x' || i, 'x' || i, 'x' || i, 'h', 1, i FROM {n} WHERE i % 5 = 0",
        "INSERT INTO berth_dms (user_lo, user_hi, room_id)
         SELECT 'a-me', 'a-x' || i, 'r-' || i FROM {n} WHERE i % 5 = 0",
    ]
    .iter()
    .map(|s| s.replace("{n}", n))
    .collect()
}

/// Times `my_rooms` for the seeded user: answers the median of a few runs, after checking the
/// answer (every room, newest activity first, DMs named).
async fn time_my_rooms(store: &Store) -> std::time::Duration {
    let mut times = Vec::new();
    for _ in 0..7 {
        let started = std::time::Instant::now();
        let rooms = store.my_rooms("a-me", 10_000).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(rooms.len(), SCALE_ROOMS as usize);
        assert!(
            rooms
                .windows(2)
                .all(|w| w[0].activity_ms >= w[1].activity_ms)
        );
        assert_eq!(rooms.iter().filter(|r| r.dm.is_some()).count(), 1000);
        assert!(
            rooms
                .iter()
                .all(|r| r.dm.as_ref().is_none_or(|d| d.1.is_some()))
        );
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::test]
async fn sqlite_my_rooms_with_thousands_of_rooms() {
    let path = temp_sqlite();
    let store = Store::sqlite(path.clone()).await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let n = format!(
            "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {SCALE_ROOMS}) SELECT i FROM s) AS n"
        );
        let mut batch = String::from("BEGIN;");
        for sql in scale_seed(&n) {
            batch.push_str(&sql);
            batch.push(';');
        }
        batch.push_str("COMMIT;");
        conn.execute_batch(&batch).unwrap();
    }
    let median = time_my_rooms(&store).await;
    println!("my_rooms on SQLite: {SCALE_ROOMS} rooms in {median:?} (median of 7)");
    assert!(median < std::time::Duration::from_secs(2), "{median:?}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn postgres_my_rooms_with_thousands_of_rooms() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let db = TempDatabase::create(&admin).await;
    let store = Store::postgres(&db.url).await.unwrap();
    let n = format!("generate_series(1, {SCALE_ROOMS}) AS n(i)");
    let mut batch = String::from("BEGIN;");
    for sql in scale_seed(&n) {
        batch.push_str(&sql);
        batch.push(';');
    }
    batch.push_str("COMMIT; ANALYZE;");
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn_task = tokio::spawn(connection);
    client.batch_execute(&batch).await.unwrap();
    drop(client);
    let _ = conn_task.await;
    let median = time_my_rooms(&store).await;
    println!("my_rooms on PostgreSQL: {SCALE_ROOMS} rooms in {median:?} (median of 7)");
    assert!(median < std::time::Duration::from_secs(2), "{median:?}");
}
