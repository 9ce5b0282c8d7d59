//! Membership, read positions, direct messages and "my rooms" on PostgreSQL (see
//! [`crate::conversations`]).

use tokio_postgres::GenericClient;

use super::{PgStore, pg_error};
use crate::conversations::{DM_ROOM_NAME, Marks, MyRoomRow, RoomAccess};
use crate::{StoreError, from_sql, to_sql};

/// Adds a member row unless there is one (answers whether it added one).
pub(crate) async fn insert_member(
    client: &impl GenericClient,
    room_id: &str,
    user_id: &str,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let added = client
        .execute(
            "INSERT INTO berth_members (user_id, room_id, read_seq, added_at_ms) VALUES ($1, $2, 0, $3)
             ON CONFLICT (user_id, room_id) DO NOTHING",
            &[&user_id, &room_id, &to_sql(now_ms)],
        )
        .await
        .map_err(pg_error)?;
    Ok(added == 1)
}

/// Writes read positions (forward only) and room activity: one statement each, whatever
/// their number.
pub(super) async fn write_marks(
    client: &impl GenericClient,
    marks: &Marks,
) -> Result<(), StoreError> {
    let now = to_sql(berth_protocol::now_ms());
    if !marks.reads.is_empty() {
        let (mut rooms, mut users, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
        for ((room, user), seq) in &marks.reads {
            rooms.push(&**room);
            users.push(&**user);
            seqs.push(to_sql(*seq));
        }
        client
            .execute(
                "INSERT INTO berth_members (user_id, room_id, read_seq, added_at_ms)
                 SELECT u, r, s, $4::int8 FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS t(u, r, s)
                 ON CONFLICT (user_id, room_id)
                 DO UPDATE SET read_seq = GREATEST(berth_members.read_seq, EXCLUDED.read_seq)",
                &[&users, &rooms, &seqs, &now],
            )
            .await
            .map_err(pg_error)?;
    }
    if !marks.activity.is_empty() {
        let rooms: Vec<&str> = marks.activity.keys().map(|r| &**r).collect();
        let seqs: Vec<i64> = marks.activity.values().map(|s| to_sql(*s)).collect();
        client
            .execute(
                "INSERT INTO berth_room_activity (room_id, last_seq, last_ms)
                 SELECT r, s, $3::int8 FROM UNNEST($1::text[], $2::int8[]) AS t(r, s)
                 ON CONFLICT (room_id) DO UPDATE
                 SET last_seq = GREATEST(berth_room_activity.last_seq, EXCLUDED.last_seq),
                     last_ms = EXCLUDED.last_ms",
                &[&rooms, &seqs, &now],
            )
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}

impl PgStore {
    pub(crate) async fn write_marks(&self, marks: &Marks) -> Result<(), StoreError> {
        self.call_on(&self.marks, async |client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            write_marks(&tx, marks).await?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    pub(crate) async fn room_access(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<RoomAccess>, StoreError> {
        self.call(false, async |client| {
            let row = client
                .query_opt(
                    "SELECT r.private, EXISTS (SELECT 1 FROM berth_members m
                                               WHERE m.user_id = $2 AND m.room_id = r.room_id)
                     FROM berth_rooms r WHERE r.room_id = $1",
                    &[&room_id, &user_id],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| RoomAccess {
                private: r.get(0),
                member: r.get(1),
            }))
        })
        .await
    }

    pub(crate) async fn add_member(
        &self,
        room_id: &str,
        user_id: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.call(true, async |client| {
            insert_member(&*client, room_id, user_id, now_ms).await
        })
        .await
    }

    pub(crate) async fn open_dm(
        &self,
        lo: &str,
        hi: &str,
        creator: &str,
        room_id: &str,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        self.call(true, async |client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            // The pair's row first: a concurrent request for the same pair waits here on the
            // unique key, then finds the winner's room.
            let added = tx
                .execute(
                    "INSERT INTO berth_dms (user_lo, user_hi, room_id) VALUES ($1, $2, $3)
                     ON CONFLICT (user_lo, user_hi) DO NOTHING",
                    &[&lo, &hi, &room_id],
                )
                .await
                .map_err(pg_error)?;
            if added == 1 {
                tx.execute(
                    "INSERT INTO berth_rooms (room_id, name, public, private, created_by, created_at_ms)
                     VALUES ($1, $2, false, true, $3, $4) ON CONFLICT (room_id) DO NOTHING",
                    &[&room_id, &DM_ROOM_NAME, &creator, &to_sql(now_ms)],
                )
                .await
                .map_err(pg_error)?;
            }
            let stored: String = tx
                .query_one(
                    "SELECT room_id FROM berth_dms WHERE user_lo = $1 AND user_hi = $2",
                    &[&lo, &hi],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            for user in [lo, hi] {
                insert_member(&tx, &stored, user, now_ms).await?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(stored)
        })
        .await
    }

    pub(crate) async fn my_rooms(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<MyRoomRow>, StoreError> {
        self.call(false, async |client| {
            let rows = client
                .query(MY_ROOMS, &[&user_id, &to_sql(limit as u64)])
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let other: Option<String> = r.get(3);
                    MyRoomRow {
                        room_id: r.get(0),
                        name: r.get(1),
                        private: r.get(2),
                        dm: other.map(|o| (o, r.get(4))),
                        last_seq: from_sql(r.get(5)),
                        read_seq: from_sql(r.get(6)),
                        activity_ms: from_sql(r.get(7)),
                    }
                })
                .collect())
        })
        .await
    }

    pub(crate) async fn read_positions(
        &self,
        room_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.call(false, async |client| {
            let rows = client
                .query(
                    "SELECT user_id, read_seq FROM berth_members
                     WHERE room_id = $1 AND read_seq > 0 ORDER BY read_seq DESC LIMIT $2",
                    &[&room_id, &to_sql(limit as u64)],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), from_sql(r.get(1))))
                .collect())
        })
        .await
    }
}

/// "My rooms" in one statement (see the SQLite store's for the shape).
const MY_ROOMS: &str = "
SELECT m.room_id,
       COALESCE(r.name, m.room_id),
       COALESCE(r.private, false),
       CASE WHEN d.user_lo = m.user_id THEN d.user_hi ELSE d.user_lo END,
       acc.username,
       COALESCE(a.last_seq,
                (SELECT MAX(x.seq) FROM berth_messages x WHERE x.room_id = m.room_id), 0)::int8,
       m.read_seq,
       COALESCE(a.last_ms, r.created_at_ms, m.added_at_ms) AS activity
FROM berth_members m
LEFT JOIN berth_rooms r ON r.room_id = m.room_id
LEFT JOIN berth_room_activity a ON a.room_id = m.room_id
LEFT JOIN berth_dms d ON d.room_id = m.room_id
LEFT JOIN berth_accounts acc
       ON acc.user_id = (CASE WHEN d.user_lo = m.user_id THEN d.user_hi ELSE d.user_lo END)
WHERE m.user_id = $1
ORDER BY activity DESC, m.room_id
LIMIT $2";
