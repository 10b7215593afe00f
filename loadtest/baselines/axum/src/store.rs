//! `--durable`: every message is committed to redb in a write transaction of
//! its own, with redb's default (immediate, fsync'd) durability, before it is
//! acknowledged or delivered.
//!
//! redb admits one write transaction at a time; `writer` makes that explicit
//! and is held from seq assignment through commit to delivery, so a room's
//! seq order, commit order and delivery order are the same.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::rooms::{now_ms, Room, DEDUP_WINDOW_MS, TAIL};
use crate::wire::MsgItem;

/// (room, seq) -> the message JSON without `op`.
const MESSAGES: TableDefinition<(&str, u64), &str> = TableDefinition::new("messages");
/// room -> (last seq, last ts).
const ROOMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rooms");
/// (room, user, id) -> (seq, ts), so a repeated id is recognised after a restart.
const DEDUP: TableDefinition<(&str, &str, &str), (u64, u64)> = TableDefinition::new("dedup");

pub struct Store {
    db: Database,
    writer: Mutex<()>,
}

impl Store {
    /// Opens (or creates) `<dir>/baseline.redb` and loads each room's last
    /// seq, its tail and the live part of the dedup window.
    pub fn open(dir: &Path) -> Result<(Store, HashMap<String, Room>), redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = Database::create(dir.join("baseline.redb"))?;
        // Make sure the tables exist so that reads below can open them.
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(ROOMS)?;
        txn.open_table(DEDUP)?;
        txn.commit()?;

        let mut rooms: HashMap<String, Room> = HashMap::new();
        let read = db.begin_read()?;
        let messages = read.open_table(MESSAGES)?;
        for row in read.open_table(ROOMS)?.iter()? {
            let (name, last) = row?;
            let name = name.value().to_string();
            let (seq, ts) = last.value();
            let room = rooms.entry(name.clone()).or_default();
            let first = seq.saturating_sub(TAIL as u64) + 1;
            for m in messages.range((name.as_str(), first)..=(name.as_str(), seq))? {
                let (_, json) = m?;
                if let Ok(item) = serde_json::from_str::<MsgItem>(json.value()) {
                    room.restore(item);
                }
            }
            room.restore_last(seq, ts);
        }
        let now = now_ms();
        for row in read.open_table(DEDUP)?.iter()? {
            let (k, v) = row?;
            let (room, user, id) = k.value();
            let (seq, ts) = v.value();
            if ts + DEDUP_WINDOW_MS > now {
                rooms.entry(room.to_string()).or_default().remember_dup(user, id, seq, ts);
            }
        }
        drop(messages);
        drop(read);
        Ok((Store { db, writer: Mutex::new(()) }, rooms))
    }

    pub fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One write transaction for one message, committed durably. Blocks
    /// until the data is on disk: call it off the async workers.
    pub fn commit(&self, item: &MsgItem, json: &str) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            messages.insert((item.room.as_str(), item.seq), json)?;
            let mut rooms = txn.open_table(ROOMS)?;
            rooms.insert(item.room.as_str(), (item.seq, item.ts))?;
            if let Some(id) = &item.id {
                let mut dedup = txn.open_table(DEDUP)?;
                dedup.insert((item.room.as_str(), item.from.as_str(), id.as_str()), (item.seq, item.ts))?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}
