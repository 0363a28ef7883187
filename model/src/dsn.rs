//! Connection strings in messages: a DSN may carry a password, and secrets
//! never reach logs or errors. Every message that names a database names it
//! through [`describe`].
//!
//! ```
//! use tributary_model::dsn::describe;
//! assert_eq!(
//!     describe("host=db1 port=5433 user=cdc password=hunter2 dbname=orders"),
//!     "host=db1 port=5433 user=cdc dbname=orders"
//! );
//! assert_eq!(
//!     describe("postgres://cdc:hunter2@db1:5433/orders?sslmode=require"),
//!     "postgres://cdc@db1:5433/orders?sslmode=require"
//! );
//! ```

/// The DSN without its password (key-value or URL form). Anything that
/// cannot be read as either is not shown at all.
pub fn describe(dsn: &str) -> String {
    let dsn = dsn.trim();
    if let Some(rest) = dsn
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            dsn.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{user}@{host}")
            }
            None => authority.to_string(),
        };
        let tail = redact_query(tail);
        return format!("{scheme}{authority}{tail}");
    }
    let mut out = Vec::new();
    let mut chars = dsn.chars().peekable();
    // key = value pairs; values may be single-quoted with \' and \\ escapes.
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(_) = chars.peek() else { break };
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return "<unreadable connection string>".into();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut raw = String::new();
        if chars.peek() == Some(&'\'') {
            raw.push(chars.next().expect("peeked"));
            let mut closed = false;
            while let Some(c) = chars.next() {
                raw.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        raw.push(n);
                    }
                } else if c == '\'' {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return "<unreadable connection string>".into();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                raw.push(c);
                chars.next();
            }
        }
        if !key.eq_ignore_ascii_case("password") {
            out.push(format!("{key}={raw}"));
        }
    }
    out.join(" ")
}

fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.to_ascii_lowercase().starts_with("password="))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive() {
        for dsn in [
            "host=a password=s3cret user=u",
            "host=a password = 's3 cret\\'x' user=u",
            "postgresql://u:s3cret@a/db",
            "postgres://a/db?user=u&password=s3cret",
            "host=a password='s3cret",
            "s3cret",
        ] {
            let shown = describe(dsn);
            assert!(
                !shown.contains("s3cret") && !shown.contains("cret"),
                "{dsn} -> {shown}"
            );
        }
        assert_eq!(describe("host=a password=x user=u"), "host=a user=u");
        assert_eq!(
            describe("postgres://a/db?user=u&password=x"),
            "postgres://a/db?user=u"
        );
    }
}
