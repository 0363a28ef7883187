//! libpq connection strings, split into what tokio-postgres reads and the
//! TLS settings it cannot (`sslmode=verify-ca|verify-full`, `sslrootcert`).
//!
//! Both libpq forms are read: `key=value` pairs (values optionally in single
//! quotes, with `\'` and `\\`) and `postgres://` URLs (settings in the query,
//! percent-encoded). Messages name a DSN only through
//! [`tributary_model::dsn::describe`], never with its password.

use std::path::PathBuf;

use tributary_model::dsn::{Setting, describe, settings};

use super::tls::{SslMode, TlsSettings};
use crate::{Error, Result};

/// A source DSN, parsed.
pub(crate) struct Dsn {
    /// Everything but the TLS settings, with tokio-postgres' nearest
    /// `sslmode` (it knows disable, prefer and require).
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: TlsSettings,
    /// The DSN without its password, for messages.
    pub(crate) shown: String,
}

/// The settings read here and removed before tokio-postgres parses the rest.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert"];

impl Dsn {
    pub(crate) fn parse(dsn: &str) -> Result<Dsn> {
        let shown = describe(dsn);
        let invalid = |why: String| Error::Config(format!("invalid DSN {shown}: {why}"));
        let (rest, settings) = match url_parts(dsn) {
            Some((base, query)) => split_url(base, query).map_err(invalid)?,
            None => split_key_values(dsn).map_err(invalid)?,
        };
        let mut mode = SslMode::Prefer;
        let mut root_cert = None;
        for (key, value) in settings {
            if key == "sslmode" {
                mode = SslMode::parse(&value).map_err(invalid)?;
            } else {
                root_cert = Some(PathBuf::from(value));
            }
        }
        for key in ["sslcert", "sslkey"] {
            if has_key(&rest, key) {
                return Err(invalid(format!(
                    "{key}: client certificates are not supported; authenticate with a password (SCRAM) over TLS"
                )));
            }
        }
        // tokio-postgres' errors name the option, never its value.
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e| invalid(format!("{e}")))?;
        config.ssl_mode(mode.for_tokio_postgres());
        let tls = TlsSettings::new(mode, root_cert).map_err(invalid)?;
        Ok(Dsn { config, tls, shown })
    }
}

/// `Some((before '?', after '?'))` for the URL form.
fn url_parts(dsn: &str) -> Option<(&str, &str)> {
    let dsn = dsn.trim();
    if !(dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")) {
        return None;
    }
    Some(dsn.split_once('?').unwrap_or((dsn, "")))
}

type Split = (String, Vec<(String, String)>);

/// The URL without the TLS settings, and those settings.
fn split_url(base: &str, query: &str) -> Result<Split, String> {
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, percent_decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in a URL parameter")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a URL parameter is not UTF-8".to_string())
}

/// The `key=value` DSN without the TLS settings, and those settings.
fn split_key_values(dsn: &str) -> Result<Split, String> {
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for Setting { key, raw, value } in settings(dsn)? {
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.push(format!("{key}={raw}"));
        }
    }
    Ok((kept.join(" "), tls))
}

/// Whether the (TLS-stripped) DSN sets `key`.
fn has_key(rest: &str, key: &str) -> bool {
    match url_parts(rest) {
        Some((_, query)) => query.split('&').any(|p| {
            p.split('=')
                .next()
                .and_then(|k| percent_decode(k).ok())
                .as_deref()
                == Some(key)
        }),
        None => rest
            .split_whitespace()
            .any(|p| p.split('=').next() == Some(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_dsns_lose_their_tls_settings_to_us() {
        let d = Dsn::parse(
            "host=db1 port=5433 user=cdc password='p w\\'d' dbname=orders sslmode=verify-full sslrootcert='/etc/my certs/ca.pem'",
        )
        .unwrap();
        assert_eq!(d.config.get_password(), Some(&b"p w'd"[..]));
        assert_eq!(d.config.get_dbname(), Some("orders"));
        assert_eq!(d.config.get_ports(), [5433]);
        assert_eq!(d.tls.mode(), SslMode::VerifyFull);
        assert_eq!(
            d.tls.root_cert(),
            Some(std::path::Path::new("/etc/my certs/ca.pem"))
        );
        assert_eq!(
            d.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert!(!d.shown.contains("p w"), "{}", d.shown);
    }

    #[test]
    fn url_dsns_lose_their_tls_settings_to_us() {
        let d = Dsn::parse(
            "postgres://cdc:s3cret@db1:5433/orders?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(d.tls.mode(), SslMode::VerifyCa);
        assert_eq!(d.tls.root_cert(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert_eq!(d.config.get_application_name(), Some("x"));
        assert_eq!(d.config.get_password(), Some(&b"s3cret"[..]));
        let plain = Dsn::parse("postgresql://cdc@db1/orders").unwrap();
        assert_eq!(plain.tls.mode(), SslMode::Prefer);
    }

    #[test]
    fn libpq_modes_and_their_defaults() {
        let mode = |dsn: &str| Dsn::parse(dsn).map(|d| d.tls.mode());
        assert_eq!(mode("host=a user=u").unwrap(), SslMode::Prefer);
        assert_eq!(
            mode("host=a user=u sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode("host=a user=u sslmode=require").unwrap(),
            SslMode::Require
        );
        assert!(mode("host=a user=u sslmode=verify-full sslrootcert=/x").is_ok());
    }

    #[test]
    fn bad_dsns_say_what_is_wrong_without_the_password() {
        for (dsn, says) in [
            ("host=a password=s3cret sslmode=bogus", "sslmode"),
            ("host=a password=s3cret nosuch=1", "nosuch"),
            ("host=a password='s3cret", "unterminated"),
            (
                "host=a password=s3cret sslcert=/c.pem",
                "client certificates",
            ),
            (
                "postgres://u:s3cret@a/db?sslmode=verify-full&sslrootcert=system",
                "sslrootcert=system",
            ),
            ("postgres://u:s3cret@a/db?sslmode=%zz", "percent"),
        ] {
            let Err(e) = Dsn::parse(dsn) else {
                panic!("{dsn} parsed")
            };
            let text = tributary_model::error_chain(&e);
            assert!(text.contains(says), "{dsn}: {text}");
            assert!(!text.contains("s3cret"), "{dsn}: {text}");
        }
    }
}
