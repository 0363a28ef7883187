//! Connection strings in messages: a DSN may carry a password, and secrets
//! never reach logs or errors. Every message that names a database names it
//! through [`describe`]. [`settings`] reads the `key=value` form for it and
//! for whoever else needs a DSN's settings.
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
//! assert_eq!(
//!     describe("redis://app:hunter2@cache:6379/2"),
//!     "redis://app@cache:6379/2"
//! );
//! ```

/// The DSN without its password: libpq's key-value form, or a URL of any
/// scheme (`postgres://`, `redis://`, …). Anything that cannot be read as
/// either is not shown at all.
pub fn describe(dsn: &str) -> String {
    let dsn = dsn.trim();
    let url = dsn.split_once("://").filter(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    });
    if let Some((scheme, rest)) = url {
        let scheme = format!("{scheme}://");
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
    match settings(dsn) {
        Ok(settings) => settings
            .iter()
            .filter(|s| !s.key.eq_ignore_ascii_case("password"))
            .map(|s| format!("{}={}", s.key, s.raw))
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "<unreadable connection string>".into(),
    }
}

/// One setting of a `key=value` connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    /// The value as written (quotes and escapes kept), to pass on as it is.
    pub raw: String,
    /// The value as meant (quotes removed, escapes resolved).
    pub value: String,
}

/// The settings of a connection string in libpq's `key=value` form: values
/// optionally in single quotes, with `\'` and `\\` escapes. The error says
/// what is wrong and names the key it stopped at, never a value.
///
/// ```
/// use tributary_model::dsn::settings;
/// let s = settings(r"host=db1 password='p w\'d'").unwrap();
/// assert_eq!((s[1].key.as_str(), s[1].value.as_str()), ("password", "p w'd"));
/// assert_eq!(s[1].raw, r"'p w\'d'");
/// ```
pub fn settings(dsn: &str) -> Result<Vec<Setting>, String> {
    let mut out = Vec::new();
    let mut chars = dsn.chars().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        skip_spaces(&mut chars);
        if chars.next() != Some('=') {
            return Err(format!("setting {key:?} has no value"));
        }
        skip_spaces(&mut chars);
        let mut raw = String::new();
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            raw.push(chars.next().expect("peeked"));
            let mut closed = false;
            while let Some(c) = chars.next() {
                raw.push(c);
                match c {
                    '\\' => {
                        let next = chars
                            .next()
                            .ok_or_else(|| format!("value of {key} ends in a backslash"))?;
                        raw.push(next);
                        value.push(next);
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated quoted value of {key}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    let next = chars
                        .next()
                        .ok_or_else(|| format!("value of {key} ends in a backslash"))?;
                    raw.push('\\');
                    raw.push(next);
                    value.push(next);
                    continue;
                }
                raw.push(c);
                value.push(c);
                chars.next();
            }
        }
        out.push(Setting { key, raw, value });
    }
    Ok(out)
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
            "redis://app:s3cret@cache.internal:6379/2",
            "redis://:s3cret@127.0.0.1:6379",
            "rediss://u:s3cret@a:6380",
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
        // Other schemes: user and host kept, the password gone.
        assert_eq!(
            describe("redis://app:s3cret@cache.internal:6379/2"),
            "redis://app@cache.internal:6379/2"
        );
        assert_eq!(describe("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
