//! A minimal PostgreSQL replication-protocol client.
//!
//! `tokio-postgres` has no CopyBoth support, so the walsender conversation is
//! spoken here directly: startup with `replication=database`, authentication
//! (trust, cleartext, MD5, SCRAM-SHA-256), simple queries for the replication
//! commands, then the CopyBoth stream of `XLogData` and keepalives. The
//! connection itself (TCP, TLS) is opened by [`crate::source`].

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tributary_model::lsn::Lsn;

use crate::{Error, Result};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub(crate) const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The receiving side of a connection to the server (plain or TLS).
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The sending side of a connection to the server (plain or TLS).
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Who connects, to which database.
pub(crate) struct Startup<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub password: Option<&'a [u8]>,
    pub application_name: &'a str,
}

/// A message from the server, framed but not yet interpreted.
struct Frame {
    tag: u8,
    body: Bytes,
}

/// One message of the replication stream.
#[derive(Debug)]
pub(crate) enum ReplicationMessage {
    /// WAL data: one pgoutput message; `wal_end` is how far the server has sent.
    XLogData { wal_end: Lsn, data: Bytes },
    /// Server keepalive; `reply_requested` asks for a status update now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A connection to a walsender in logical replication mode.
pub(crate) struct ReplicationConnection {
    reader: BufReader<ReadHalf>,
    writer: StatusSender,
}

/// The receiving half of a connection in CopyBoth mode.
pub(crate) struct MessageReader {
    reader: BufReader<ReadHalf>,
    target: String,
}

/// The sending half: status updates to the walsender.
pub(crate) struct StatusSender {
    writer: WriteHalf,
    out: BytesMut,
    /// Where we connect, for error messages (never includes the password).
    target: String,
}

impl ReplicationConnection {
    /// Speaks the startup and authentication over an open connection
    /// (plain or TLS, see [`crate::source`]). `target` names the server in
    /// messages (`host:port/db`, never a password).
    pub(crate) async fn start(
        read: ReadHalf,
        write: WriteHalf,
        target: String,
        startup: Startup<'_>,
    ) -> Result<Self> {
        let mut conn = ReplicationConnection {
            reader: BufReader::with_capacity(256 * 1024, read),
            writer: StatusSender {
                writer: write,
                out: BytesMut::with_capacity(1024),
                target,
            },
        };
        let params = [
            ("user", startup.user),
            ("database", startup.database),
            ("replication", "database"),
            ("application_name", startup.application_name),
            // Values arrive in text form; fix their format.
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.writer.out)
            .map_err(Error::Io)?;
        conn.writer.flush().await?;
        conn.authenticate(startup.user, startup.password).await?;
        Ok(conn)
    }

    /// A PasswordMessage: the cleartext password or its MD5 hash, ended by
    /// a NUL as the protocol wants.
    async fn send_password(&mut self, mut password: Vec<u8>) -> Result<()> {
        password.push(0);
        frontend::password_message(&password, &mut self.writer.out).map_err(Error::Io)?;
        self.writer.flush().await
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<()> {
        let need_password =
            || Error::Config("server asks for a password and the DSN has none".into());
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'R' => {
                    let mut body = frame.body.clone();
                    let kind = get_i32(&mut body)?;
                    match kind {
                        0 => {}
                        3 => {
                            let pw = password.ok_or_else(need_password)?;
                            self.send_password(pw.to_vec()).await?;
                        }
                        5 => {
                            let pw = password.ok_or_else(need_password)?;
                            if body.remaining() < 4 {
                                return Err(self.protocol("short MD5 salt"));
                            }
                            let mut salt = [0u8; 4];
                            body.copy_to_slice(&mut salt);
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                pw,
                                salt,
                            );
                            self.send_password(hash.into_bytes()).await?;
                        }
                        10 => {
                            let pw = password.ok_or_else(need_password)?;
                            let mechanisms = String::from_utf8_lossy(&body).to_string();
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                return Err(self.protocol("server offers no SCRAM-SHA-256"));
                            }
                            let mut scram = ScramSha256::new(pw, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                scram.message(),
                                &mut self.writer.out,
                            )
                            .map_err(Error::Io)?;
                            self.writer.flush().await?;
                            let cont = self.expect_auth(11).await?;
                            scram.update(&cont).map_err(Error::Io)?;
                            frontend::sasl_response(scram.message(), &mut self.writer.out)
                                .map_err(Error::Io)?;
                            self.writer.flush().await?;
                            let fin = self.expect_auth(12).await?;
                            scram.finish(&fin).map_err(Error::Io)?;
                        }
                        other => {
                            return Err(self
                                .protocol(&format!("unsupported authentication method {other}")));
                        }
                    }
                }
                b'S' | b'K' | b'N' => {}
                b'Z' => return Ok(()),
                b'E' => return Err(self.server_error(&frame.body)),
                other => {
                    return Err(self.protocol(&format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )));
                }
            }
        }
    }

    async fn expect_auth(&mut self, kind: i32) -> Result<Bytes> {
        let frame = self.read_frame().await?;
        match frame.tag {
            b'R' => {
                let mut body = frame.body;
                if get_i32(&mut body)? != kind {
                    return Err(self.protocol("unexpected SASL step"));
                }
                Ok(body)
            }
            b'E' => Err(self.server_error(&frame.body)),
            _ => Err(self.protocol("unexpected message during SASL")),
        }
    }

    /// Runs a simple query and returns its rows as text (NULL as `None`).
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.writer.out).map_err(Error::Io)?;
        self.writer.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                b'D' => rows.push(parse_data_row(frame.body).map_err(|m| self.protocol(&m))?),
                b'E' => error = Some(self.server_error(&frame.body)),
                b'Z' => break,
                other => {
                    return Err(self.protocol(&format!(
                        "unexpected message {:?} after query",
                        other as char
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION`, waits for the CopyBoth response and splits
    /// the connection into its receiving and sending halves.
    pub(crate) async fn start_replication(
        mut self,
        command: &str,
    ) -> Result<(MessageReader, StatusSender)> {
        frontend::query(command, &mut self.writer.out).map_err(Error::Io)?;
        self.writer.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => {
                    let target = self.writer.target.clone();
                    return Ok((
                        MessageReader {
                            reader: self.reader,
                            target,
                        },
                        self.writer,
                    ));
                }
                b'N' | b'S' => {}
                b'E' => return Err(self.server_error(&frame.body)),
                other => {
                    return Err(
                        self.protocol(&format!("expected CopyBoth, got {:?}", other as char))
                    );
                }
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Frame> {
        read_frame(&mut self.reader, &self.writer.target).await
    }

    fn protocol(&self, message: &str) -> Error {
        protocol_error(&self.writer.target, message)
    }

    fn server_error(&self, body: &[u8]) -> Error {
        server_error(&self.writer.target, body)
    }
}

impl MessageReader {
    /// Reads the next replication message. Returns `None` when the server ends the stream.
    pub(crate) async fn next_message(&mut self) -> Result<Option<ReplicationMessage>> {
        loop {
            let frame = read_frame(&mut self.reader, &self.target).await?;
            match frame.tag {
                b'd' => {
                    let mut body = frame.body;
                    if !body.has_remaining() {
                        return Err(protocol_error(&self.target, "empty CopyData"));
                    }
                    match body.get_u8() {
                        b'w' => {
                            if body.remaining() < 24 {
                                return Err(protocol_error(&self.target, "short XLogData header"));
                            }
                            let _wal_start = body.get_u64();
                            let wal_end = Lsn(body.get_u64());
                            let _server_time = body.get_i64();
                            return Ok(Some(ReplicationMessage::XLogData {
                                wal_end,
                                data: body,
                            }));
                        }
                        b'k' => {
                            if body.remaining() < 17 {
                                return Err(protocol_error(&self.target, "short keepalive"));
                            }
                            let wal_end = Lsn(body.get_u64());
                            let _server_time = body.get_i64();
                            let reply_requested = body.get_u8() == 1;
                            return Ok(Some(ReplicationMessage::Keepalive {
                                wal_end,
                                reply_requested,
                            }));
                        }
                        other => {
                            return Err(protocol_error(
                                &self.target,
                                &format!("unknown CopyData kind {:?}", other as char),
                            ));
                        }
                    }
                }
                b'c' | b'C' | b'Z' => return Ok(None),
                b'N' | b'S' => {}
                b'E' => return Err(server_error(&self.target, &frame.body)),
                other => {
                    return Err(protocol_error(
                        &self.target,
                        &format!("unexpected message {:?} in stream", other as char),
                    ));
                }
            }
        }
    }
}

impl StatusSender {
    /// Tells the server how far WAL has been written, flushed (durably
    /// handled downstream) and applied. The slot's `confirmed_flush_lsn`
    /// moves to `flushed`.
    pub(crate) async fn send_status(&mut self, written: Lsn, flushed: Lsn) -> Result<()> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - PG_EPOCH_OFFSET_US;
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(flushed.0);
        msg.put_i64(now_us);
        msg.put_u8(0);
        frontend::CopyData::new(msg.freeze())
            .map_err(Error::Io)?
            .write(&mut self.out);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<()> {
        self.writer
            .write_all(&self.out)
            .await
            .map_err(|e| Error::Connect {
                target: self.target.clone(),
                source: e,
            })?;
        // A TLS stream holds written records until flushed.
        self.writer.flush().await.map_err(|e| Error::Connect {
            target: self.target.clone(),
            source: e,
        })?;
        self.out.clear();
        Ok(())
    }
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, target: &str) -> Result<Frame> {
    let io = |e| Error::Connect {
        target: target.to_string(),
        source: e,
    };
    let tag = reader.read_u8().await.map_err(io)?;
    let len = reader.read_i32().await.map_err(io)?;
    if !(4..=1 << 30).contains(&len) {
        return Err(protocol_error(
            target,
            &format!("invalid message length {len}"),
        ));
    }
    let mut body = vec![0u8; len as usize - 4];
    reader.read_exact(&mut body).await.map_err(io)?;
    Ok(Frame {
        tag,
        body: Bytes::from(body),
    })
}

fn protocol_error(target: &str, message: &str) -> Error {
    Error::Protocol(format!("{target}: {message}"))
}

fn server_error(target: &str, body: &[u8]) -> Error {
    let (code, message) = parse_error_fields(body);
    Error::Server {
        target: target.to_string(),
        code,
        message,
    }
}

fn get_i32(body: &mut Bytes) -> Result<i32> {
    if body.remaining() < 4 {
        return Err(Error::Protocol("short authentication message".into()));
    }
    Ok(body.get_i32())
}

fn parse_data_row(mut body: Bytes) -> std::result::Result<Vec<Option<String>>, String> {
    if body.remaining() < 2 {
        return Err("short DataRow".into());
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.remaining() < 4 {
            return Err("short DataRow column".into());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if body.remaining() < len {
                return Err("DataRow column overruns message".into());
            }
            row.push(Some(
                String::from_utf8_lossy(&body.split_to(len)).into_owned(),
            ));
        }
    }
    Ok(row)
}

/// Extracts SQLSTATE and message from an ErrorResponse body.
pub(crate) fn parse_error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        if let Some((&kind, value)) = field.split_first() {
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'C' => code = value,
                b'M' => message = value,
                _ => {}
            }
        }
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0";
        let (code, msg) = parse_error_fields(body);
        assert_eq!(code, "42704");
        assert!(msg.contains("does not exist"));
    }

    #[test]
    fn data_rows_reject_overruns() {
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(10);
        b.put_slice(b"abc");
        assert!(parse_data_row(b.freeze()).is_err());
        let mut b = BytesMut::new();
        b.put_i16(2);
        b.put_i32(-1);
        b.put_i32(2);
        b.put_slice(b"ok");
        assert_eq!(
            parse_data_row(b.freeze()).unwrap(),
            vec![None, Some("ok".into())]
        );
    }
}
