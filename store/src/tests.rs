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
