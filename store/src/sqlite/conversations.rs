//! Membership, read positions, direct messages and "my rooms" on SQLite (see
//! [`crate::conversations`]).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{SqliteStore, unavailable};
use crate::conversations::{DM_ROOM_NAME, Marks, MyRoomRow, RoomAccess};
use crate::{StoreError, from_sql, to_sql};

/// Adds a member row unless there is one.
pub(super) fn insert_member(
    conn: &Connection,
    room_id: &str,
    user_id: &str,
    now_ms: u64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO berth_members (user_id, room_id, read_seq, added_at_ms) VALUES (?1, ?2, 0, ?3)
         ON CONFLICT (user_id, room_id) DO NOTHING",
    )?
    .execute(params![user_id, room_id, to_sql(now_ms)])
}

/// Writes read positions (forward only) and room activity.
pub(super) fn write_marks(conn: &Connection, marks: &Marks) -> rusqlite::Result<()> {
    let now = to_sql(berth_protocol::now_ms());
    if !marks.reads.is_empty() {
        let mut read = conn.prepare_cached(
            "INSERT INTO berth_members (user_id, room_id, read_seq, added_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, room_id) DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)",
        )?;
        for ((room, user), seq) in &marks.reads {
            read.execute(params![&**user, &**room, to_sql(*seq), now])?;
        }
    }
    if !marks.activity.is_empty() {
        let mut activity = conn.prepare_cached(
            "INSERT INTO berth_room_activity (room_id, last_seq, last_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (room_id) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq),
                                                 last_ms = excluded.last_ms",
        )?;
        for (room, seq) in &marks.activity {
            activity.execute(params![&**room, to_sql(*seq), now])?;
        }
    }
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn write_marks(&self, marks: Marks) -> Result<(), StoreError> {
        self.run(true, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            write_marks(&tx, &marks).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn room_access(
        &self,
        room_id: String,
        user_id: String,
    ) -> Result<Option<RoomAccess>, StoreError> {
        self.run(false, move |conn| {
            conn.prepare_cached(
                "SELECT r.private, EXISTS (SELECT 1 FROM berth_members m
                                           WHERE m.user_id = ?2 AND m.room_id = r.room_id)
                 FROM berth_rooms r WHERE r.room_id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![room_id, user_id], |r| {
                    Ok(RoomAccess {
                        private: r.get(0)?,
                        member: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn add_member(
        &self,
        room_id: String,
        user_id: String,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.run(true, move |conn| {
            insert_member(conn, &room_id, &user_id, now_ms)
                .map(|n| n == 1)
                .map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn open_dm(
        &self,
        lo: String,
        hi: String,
        creator: String,
        room_id: String,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        self.run(true, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let added = tx
                .execute(
                    "INSERT INTO berth_dms (user_lo, user_hi, room_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_lo, user_hi) DO NOTHING",
                    params![lo, hi, room_id],
                )
                .map_err(unavailable)?;
            if added == 1 {
                tx.execute(
                    "INSERT INTO berth_rooms (room_id, name, public, private, created_by, created_at_ms)
                     VALUES (?1, ?2, 0, 1, ?3, ?4) ON CONFLICT (room_id) DO NOTHING",
                    params![room_id, DM_ROOM_NAME, creator, to_sql(now_ms)],
                )
                .map_err(unavailable)?;
            }
            let stored: String = tx
                .query_row(
                    "SELECT room_id FROM berth_dms WHERE user_lo = ?1 AND user_hi = ?2",
                    params![lo, hi],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            for user in [&lo, &hi] {
                insert_member(&tx, &stored, user, now_ms).map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(stored)
        })
        .await
    }

    pub(crate) async fn my_rooms(
        &self,
        user_id: String,
        limit: usize,
    ) -> Result<Vec<MyRoomRow>, StoreError> {
        self.run(false, move |conn| {
            let mut stmt = conn.prepare_cached(MY_ROOMS).map_err(unavailable)?;
            let rows = stmt
                .query_map(params![user_id, to_sql(limit as u64)], |r| {
                    let other: Option<String> = r.get(3)?;
                    Ok(MyRoomRow {
                        room_id: r.get(0)?,
                        name: r.get(1)?,
                        private: r.get(2)?,
                        dm: other.map(|o| (o, r.get(4).ok().flatten())),
                        last_seq: from_sql(r.get(5)?),
                        read_seq: from_sql(r.get(6)?),
                        activity_ms: from_sql(r.get(7)?),
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn read_positions(
        &self,
        room_id: String,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(false, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, read_seq FROM berth_members
                     WHERE room_id = ?1 AND read_seq > 0 ORDER BY read_seq DESC LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![room_id, to_sql(limit as u64)], |r| {
                    Ok((r.get(0)?, from_sql(r.get(1)?)))
                })
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
        .await
    }
}

/// "My rooms" in one statement: the user's membership rows (primary key prefix), each joined
/// by primary key with its room, its activity and its DM pair; the DM's other account by id.
/// Rooms stored before activity was kept fall back to their last stored message.
const MY_ROOMS: &str = "
SELECT m.room_id,
       COALESCE(r.name, m.room_id),
       COALESCE(r.private, 0),
       CASE WHEN d.user_lo = m.user_id THEN d.user_hi ELSE d.user_lo END,
       acc.username,
       COALESCE(a.last_seq,
                (SELECT MAX(x.seq) FROM berth_messages x WHERE x.room_id = m.room_id), 0),
       m.read_seq,
       COALESCE(a.last_ms, r.created_at_ms, m.added_at_ms) AS activity
FROM berth_members m
LEFT JOIN berth_rooms r ON r.room_id = m.room_id
LEFT JOIN berth_room_activity a ON a.room_id = m.room_id
LEFT JOIN berth_dms d ON d.room_id = m.room_id
LEFT JOIN berth_accounts acc
       ON acc.user_id = (CASE WHEN d.user_lo = m.user_id THEN d.user_hi ELSE d.user_lo END)
WHERE m.user_id = ?1
ORDER BY activity DESC, m.room_id
LIMIT ?2";
