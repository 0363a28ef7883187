//! Decoding of pgoutput (protocol version 1) messages.
//!
//! Input comes from the network: every read is bounds-checked and a bad
//! message becomes an error naming what was wrong and where, never a panic.

use bytes::Bytes;
use tributary_model::lsn::Lsn;

use crate::{Error, Result};

/// A column of a relation as announced by a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (the key).
    pub key: bool,
}

/// A Relation message: the shape of a table from this point of the stream on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// An unchanged TOASTed value that was not sent.
    UnchangedToast,
    Text(String),
}

/// A decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutput {
    Begin {
        final_lsn: Lsn,
        commit_ts_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts_us: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<TupleValue>,
    },
    /// `old` is the key (`K`) or the full old row (`O`) when sent.
    Update {
        relation: u32,
        old: Option<Vec<TupleValue>>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation: u32,
        old: Vec<TupleValue>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// Origin and Type messages: not needed downstream.
    Other(u8),
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: char,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::Decode(format!(
            "pgoutput {:?} message at byte {}: {what}",
            self.kind, self.pos
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(&format!(
                "needs {n} more bytes, {} left",
                self.buf.len() - self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `N` bytes, for a big-endian number.
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take gives N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.bytes()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.bytes()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.bytes()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }

    /// A PostgreSQL timestamp (µs since 2000-01-01) as µs since the Unix epoch.
    fn timestamp(&mut self) -> Result<i64> {
        self.i64()?
            .checked_add(crate::protocol::PG_EPOCH_OFFSET_US)
            .ok_or_else(|| self.err("timestamp out of range"))
    }

    fn cstr(&mut self) -> Result<String> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("string without terminator"))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| self.err("string is not UTF-8"))?
            .to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<TupleValue>> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err("negative column count"));
        }
        let mut values = Vec::with_capacity(n as usize);
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.err("negative value length"));
                    }
                    let bytes = self.take(len as usize)?;
                    TupleValue::Text(
                        std::str::from_utf8(bytes)
                            .map_err(|_| self.err("text value is not UTF-8"))?
                            .to_string(),
                    )
                }
                b'b' => {
                    return Err(self.err("binary tuple values are not requested and not supported"));
                }
                other => {
                    return Err(self.err(&format!("unknown tuple value kind {:?}", other as char)));
                }
            });
        }
        Ok(values)
    }

    fn done(&self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(self.err(&format!("{} trailing bytes", self.buf.len() - self.pos)));
        }
        Ok(())
    }
}

/// Decodes one pgoutput message.
pub fn decode(data: &Bytes) -> Result<PgOutput> {
    let Some(&tag) = data.first() else {
        return Err(Error::Decode("empty pgoutput message".into()));
    };
    let mut c = Cursor {
        buf: data,
        pos: 1,
        kind: tag as char,
    };
    let msg = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: Lsn(c.u64()?),
            commit_ts_us: c.timestamp()?,
            xid: c.u32()?,
        },
        b'C' => {
            let _flags = c.u8()?;
            PgOutput::Commit {
                commit_lsn: Lsn(c.u64()?),
                end_lsn: Lsn(c.u64()?),
                commit_ts_us: c.timestamp()?,
            }
        }
        b'R' => {
            let id = c.u32()?;
            let namespace = c.cstr()?;
            let name = c.cstr()?;
            let replica_identity = c.u8()?;
            let n = c.i16()?;
            if n < 0 {
                return Err(c.err("negative column count"));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = c.u8()?;
                columns.push(RelationColumn {
                    name: c.cstr()?,
                    type_oid: c.u32()?,
                    type_modifier: c.i32()?,
                    key: flags & 1 == 1,
                });
            }
            PgOutput::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = c.u32()?;
            if c.u8()? != b'N' {
                return Err(c.err("expected new tuple marker N"));
            }
            PgOutput::Insert {
                relation,
                new: c.tuple()?,
            }
        }
        b'U' => {
            let relation = c.u32()?;
            let mut old = None;
            let mut marker = c.u8()?;
            if marker == b'K' || marker == b'O' {
                old = Some(c.tuple()?);
                marker = c.u8()?;
            }
            if marker != b'N' {
                return Err(c.err("expected new tuple marker N"));
            }
            PgOutput::Update {
                relation,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let relation = c.u32()?;
            let marker = c.u8()?;
            if marker != b'K' && marker != b'O' {
                return Err(c.err("expected old tuple marker K or O"));
            }
            PgOutput::Delete {
                relation,
                old: c.tuple()?,
            }
        }
        b'T' => {
            let n = c.u32()?;
            let _options = c.u8()?;
            if n as usize > data.len() / 4 {
                return Err(c.err("relation count larger than the message"));
            }
            let mut relations = Vec::with_capacity(n as usize);
            for _ in 0..n {
                relations.push(c.u32()?);
            }
            PgOutput::Truncate { relations }
        }
        b'M' => {
            let flags = c.u8()?;
            let lsn = Lsn(c.u64()?);
            let prefix = c.cstr()?;
            let len = c.u32()?;
            let content = Bytes::copy_from_slice(c.take(len as usize)?);
            PgOutput::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            }
        }
        b'O' | b'Y' => return Ok(PgOutput::Other(tag)),
        other => {
            return Err(Error::Decode(format!(
                "unknown pgoutput message type {:?}",
                other as char
            )));
        }
    };
    c.done()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Messages laid out byte for byte as PostgreSQL 15's pgoutput (proto_version 1)
    // sends them for `CREATE TABLE t(id bigint primary key, name text, price
    // numeric(12,2))`; the integration tests decode the server's own.
    const RELATION: &[u8] = b"R\x00\x00\x40\x06public\x00t\x00d\x00\x03\x01id\x00\x00\x00\x00\x14\xff\xff\xff\xff\x00name\x00\x00\x00\x00\x19\xff\xff\xff\xff\x00price\x00\x00\x00\x06\xa4\x00\x0c\x00\x06";
    const BEGIN: &[u8] =
        b"B\x00\x00\x00\x00\x01\x6b\x4e\x10\x00\x02\xb7\x5c\x8c\x1f\x6d\x40\x00\x00\x02\xe6";
    const INSERT: &[u8] =
        b"I\x00\x00\x40\x06N\x00\x03t\x00\x00\x00\x017t\x00\x00\x00\x03abct\x00\x00\x00\x049.90";
    const UPDATE_TOAST: &[u8] =
        b"U\x00\x00\x40\x06N\x00\x03t\x00\x00\x00\x017ut\x00\x00\x00\x0510.00";
    const DELETE: &[u8] = b"D\x00\x00\x40\x06K\x00\x03t\x00\x00\x00\x017nn";
    const COMMIT: &[u8] = b"C\x00\x00\x00\x00\x00\x01\x6b\x4e\x10\x00\x00\x00\x00\x01\x6b\x4e\x40\x00\x02\xb7\x5c\x8c\x1f\x6d\x40";

    fn d(b: &[u8]) -> PgOutput {
        decode(&Bytes::copy_from_slice(b)).unwrap()
    }

    #[test]
    fn decodes_relation_with_key_and_typmod() {
        let PgOutput::Relation(r) = d(RELATION) else {
            panic!("not a relation")
        };
        assert_eq!(
            (r.id, r.namespace.as_str(), r.name.as_str()),
            (0x4006, "public", "t")
        );
        assert_eq!(r.replica_identity, b'd');
        assert_eq!(r.columns.len(), 3);
        assert!(r.columns[0].key && !r.columns[1].key);
        assert_eq!(r.columns[0].type_oid, 20);
        assert_eq!(r.columns[2].type_oid, 1700);
        assert_eq!(r.columns[2].type_modifier, (12 << 16 | 2) + 4);
    }

    #[test]
    fn decodes_transaction_and_changes() {
        assert!(matches!(
            d(BEGIN),
            PgOutput::Begin {
                final_lsn: Lsn(0x16B4E10),
                xid: 742,
                ..
            }
        ));
        assert_eq!(
            d(INSERT),
            PgOutput::Insert {
                relation: 0x4006,
                new: vec![
                    TupleValue::Text("7".into()),
                    TupleValue::Text("abc".into()),
                    TupleValue::Text("9.90".into())
                ]
            }
        );
        assert_eq!(
            d(UPDATE_TOAST),
            PgOutput::Update {
                relation: 0x4006,
                old: None,
                new: vec![
                    TupleValue::Text("7".into()),
                    TupleValue::UnchangedToast,
                    TupleValue::Text("10.00".into())
                ]
            }
        );
        assert!(
            matches!(d(DELETE), PgOutput::Delete { relation: 0x4006, ref old } if old.len() == 3)
        );
        assert!(matches!(
            d(COMMIT),
            PgOutput::Commit {
                commit_lsn: Lsn(0x16B4E10),
                end_lsn: Lsn(0x16B4E40),
                ..
            }
        ));
    }

    #[test]
    fn commit_time_is_unix_micros() {
        let PgOutput::Begin { commit_ts_us, .. } = d(BEGIN) else {
            panic!()
        };
        // 0x0002b75c8c1f6d40 µs after 2000-01-01 is in 2024.
        assert!(commit_ts_us > 1_700_000_000_000_000 && commit_ts_us < 1_800_000_000_000_000);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        for msg in [RELATION, BEGIN, INSERT, UPDATE_TOAST, DELETE, COMMIT] {
            for cut in 0..msg.len() {
                let r = decode(&Bytes::copy_from_slice(&msg[..cut]));
                assert!(
                    r.is_err(),
                    "prefix of {} bytes of {:?} decoded",
                    cut,
                    msg[0] as char
                );
            }
        }
    }

    #[test]
    fn corrupted_messages_never_panic() {
        // A small deterministic fuzz: flip bytes of every captured message.
        let mut state = 0x2545F4914F6CDD1Du64;
        for msg in [RELATION, BEGIN, INSERT, UPDATE_TOAST, DELETE, COMMIT] {
            for _ in 0..2000 {
                let mut m = msg.to_vec();
                for _ in 0..3 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let i = (state as usize) % m.len();
                    m[i] = (state >> 32) as u8;
                }
                let _ = decode(&Bytes::from(m));
            }
        }
    }

    /// Splits the output of `pg_recvlogical -f` (each message followed by a
    /// newline) into messages: the shortest prefix ending at a newline that
    /// decodes is the message (a shorter one is truncated, and decoding
    /// rejects trailing bytes).
    fn captured() -> Vec<Bytes> {
        let raw = include_bytes!("../tests/fixtures/pgoutput_v1.bin");
        let mut out = Vec::new();
        let mut start = 0;
        while start < raw.len() {
            let end = (start + 1..raw.len())
                .filter(|&i| raw[i] == b'\n')
                .find(|&i| decode(&Bytes::copy_from_slice(&raw[start..i])).is_ok())
                .unwrap_or_else(|| panic!("no message decodes at byte {start}"));
            out.push(Bytes::copy_from_slice(&raw[start..end]));
            start = end + 1;
        }
        out
    }

    /// A stream captured from PostgreSQL 15 with `pg_recvlogical` (pgoutput,
    /// proto_version 1, messages on) for this session:
    ///
    /// ```sql
    /// CREATE TABLE items (id bigint PRIMARY KEY, name text, note text, price numeric(12,2), seen timestamptz);
    /// ALTER TABLE items ALTER COLUMN note SET STORAGE EXTERNAL;
    /// CREATE TABLE plain (k int, v text); ALTER TABLE plain REPLICA IDENTITY FULL;
    /// INSERT INTO items VALUES (1, 'one', repeat('x', 3000), 1.50, '2026-11-26 10:00:00+00'), (2, 'two', NULL, NULL, NULL);
    /// UPDATE items SET name = 'uno' WHERE id = 1;   -- note: unchanged TOAST
    /// UPDATE items SET id = 3 WHERE id = 2;         -- key change: old key sent
    /// DELETE FROM items WHERE id = 3;
    /// INSERT INTO plain VALUES (1, 'a'); UPDATE plain SET v = 'b' WHERE k = 1; DELETE FROM plain;
    /// SELECT pg_logical_emit_message(true, 'tributary.heartbeat', 'hello');
    /// ALTER TABLE items ADD COLUMN extra int;
    /// INSERT INTO items (id, name, extra) VALUES (4, E'tab\there', 7);
    /// TRUNCATE plain;
    /// ```
    #[test]
    fn decodes_a_stream_captured_from_postgres() {
        let msgs: Vec<PgOutput> = captured().iter().map(|m| decode(m).unwrap()).collect();
        let kinds: String = msgs
            .iter()
            .map(|m| match m {
                PgOutput::Begin { .. } => 'B',
                PgOutput::Commit { .. } => 'C',
                PgOutput::Relation(_) => 'R',
                PgOutput::Insert { .. } => 'I',
                PgOutput::Update { .. } => 'U',
                PgOutput::Delete { .. } => 'D',
                PgOutput::Truncate { .. } => 'T',
                PgOutput::Message { .. } => 'M',
                PgOutput::Other(_) => 'O',
            })
            .collect();
        assert_eq!(kinds, "BRIICBUCBUCBDCBRICBUCBDCBMCBRICBRTC");
        let text = |v: &TupleValue| match v {
            TupleValue::Text(t) => t.clone(),
            other => format!("{other:?}"),
        };
        let PgOutput::Relation(items) = &msgs[1] else {
            panic!()
        };
        assert_eq!(items.name, "items");
        assert_eq!(items.replica_identity, b'd');
        let cols: Vec<(&str, u32, bool)> = items
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.key))
            .collect();
        assert_eq!(
            cols,
            [
                ("id", 20, true),
                ("name", 25, false),
                ("note", 25, false),
                ("price", 1700, false),
                ("seen", 1184, false)
            ]
        );
        let PgOutput::Insert { new, .. } = &msgs[2] else {
            panic!()
        };
        assert_eq!(text(&new[0]), "1");
        assert_eq!(text(&new[2]), "x".repeat(3000));
        assert_eq!(text(&new[3]), "1.50");
        assert_eq!(text(&new[4]), "2026-11-26 10:00:00+00");
        let PgOutput::Insert { new, .. } = &msgs[3] else {
            panic!()
        };
        assert_eq!(new[2], TupleValue::Null);
        // The unchanged TOASTed note is left out, not sent as NULL.
        let PgOutput::Update { old, new, .. } = &msgs[6] else {
            panic!()
        };
        assert!(old.is_none());
        assert_eq!(text(&new[1]), "uno");
        assert_eq!(new[2], TupleValue::UnchangedToast);
        // A key change carries the old key.
        let PgOutput::Update { old, new, .. } = &msgs[9] else {
            panic!()
        };
        assert_eq!(text(&old.as_ref().unwrap()[0]), "2");
        assert_eq!(text(&new[0]), "3");
        // REPLICA IDENTITY FULL: the whole old row.
        let PgOutput::Relation(plain) = &msgs[15] else {
            panic!()
        };
        assert_eq!(plain.replica_identity, b'f');
        let PgOutput::Update { old, .. } = &msgs[19] else {
            panic!()
        };
        assert_eq!(text(&old.as_ref().unwrap()[1]), "a");
        let PgOutput::Message {
            transactional,
            prefix,
            content,
            ..
        } = &msgs[25]
        else {
            panic!()
        };
        assert!(*transactional);
        assert_eq!(prefix, "tributary.heartbeat");
        assert_eq!(&content[..], b"hello");
        // ADD COLUMN: a new Relation before the next change.
        let PgOutput::Relation(items2) = &msgs[28] else {
            panic!()
        };
        assert_eq!(items2.columns.len(), 6);
        assert_eq!(items2.columns[5].name, "extra");
        let PgOutput::Insert { new, .. } = &msgs[29] else {
            panic!()
        };
        assert_eq!(text(&new[1]), "tab\there");
        assert_eq!(text(&new[5]), "7");
        let PgOutput::Truncate { relations } = &msgs[33] else {
            panic!()
        };
        assert_eq!(relations, &vec![plain.id]);
    }

    #[test]
    fn captured_messages_truncated_or_corrupted_never_panic() {
        let mut state = 0x9E3779B97F4A7C15u64;
        for msg in captured() {
            for cut in 0..msg.len() {
                assert!(decode(&msg.slice(..cut)).is_err());
            }
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut bad = msg.to_vec();
                let i = (state as usize) % bad.len();
                bad[i] ^= (state >> 32) as u8 | 1;
                let _ = decode(&Bytes::from(bad));
            }
        }
    }

    #[test]
    fn errors_say_where() {
        let err = decode(&Bytes::from_static(b"I\x00\x00\x40\x06X")).unwrap_err();
        assert!(err.to_string().contains("'I'"), "{err}");
        assert!(
            decode(&Bytes::from_static(b"Z"))
                .unwrap_err()
                .to_string()
                .contains("unknown")
        );
    }
}
