//! Request extractors that answer every bad input with a JSON error naming
//! the field, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A JSON object body.
pub(crate) struct JsonBody(pub(crate) Fields);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let json = ct
                .to_str()
                .map(|v| {
                    v.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("application/json")
                })
                .unwrap_or(false);
            if !json {
                return Err(Error::bad("Content-Type", "must be application/json"));
            }
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::bad("body", format!("cannot read the body: {}", e.body_text())))?;
        parse_object(&bytes).map(JsonBody)
    }
}

/// Parses a request body that must be one JSON object.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Fields> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::bad(
            "body",
            format!("malformed JSON at line {} column {}", e.line(), e.column()),
        )
    })?;
    match value {
        Value::Object(map) => Ok(Fields::new(map, String::new())),
        _ => Err(Error::bad("body", "expected a JSON object")),
    }
}

/// Typed access to the members of a JSON object; every error names the field
/// by its path (`items[2].quantity`).
#[derive(Debug)]
pub(crate) struct Fields {
    map: Map<String, Value>,
    prefix: String,
}

impl Fields {
    pub(crate) fn new(map: Map<String, Value>, prefix: String) -> Fields {
        Fields { map, prefix }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Rejects members other than `allowed`, so that typos do not pass silently.
    pub(crate) fn deny_unknown(&self, allowed: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(Error::bad(self.path(k), "unknown field")),
            None => Ok(()),
        }
    }

    fn present(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&Value> {
        self.present(name)
            .ok_or_else(|| Error::bad(self.path(name), "missing field"))
    }

    /// A required, non-blank string of at most `max` characters.
    pub(crate) fn string(&self, name: &str, max: usize) -> Result<String> {
        self.opt_string(name, max)?
            .ok_or_else(|| Error::bad(self.path(name), "missing field"))
    }

    /// An optional string; when present it must be non-blank and short enough.
    pub(crate) fn opt_string(&self, name: &str, max: usize) -> Result<Option<String>> {
        let Some(v) = self.present(name) else {
            return Ok(None);
        };
        let s = v
            .as_str()
            .ok_or_else(|| Error::bad(self.path(name), "expected a string"))?
            .trim();
        if s.is_empty() {
            return Err(Error::bad(self.path(name), "must not be empty"));
        }
        if s.chars().count() > max {
            return Err(Error::bad(
                self.path(name),
                format!("must be at most {max} characters"),
            ));
        }
        Ok(Some(s.to_owned()))
    }

    /// An optional ISO 3166-1 alpha-2 country code: two upper-case letters.
    pub(crate) fn opt_country(&self, name: &str) -> Result<Option<String>> {
        let Some(c) = self.opt_string(name, 2)? else {
            return Ok(None);
        };
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::bad(
                self.path(name),
                "must be a two-letter upper-case country code (ISO 3166-1 alpha-2)",
            ));
        }
        Ok(Some(c))
    }

    /// A required integer.
    pub(crate) fn int(&self, name: &str) -> Result<i64> {
        self.required(name)?
            .as_i64()
            .ok_or_else(|| Error::bad(self.path(name), "expected an integer"))
    }

    /// A required number.
    pub(crate) fn number(&self, name: &str) -> Result<f64> {
        self.required(name)?
            .as_f64()
            .ok_or_else(|| Error::bad(self.path(name), "expected a number"))
    }

    /// A required array of objects, each wrapped for typed access.
    pub(crate) fn objects(&self, name: &str) -> Result<Vec<Fields>> {
        let arr = self
            .required(name)?
            .as_array()
            .ok_or_else(|| Error::bad(self.path(name), "expected an array"))?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("{}[{i}]", self.path(name));
                match v {
                    Value::Object(m) => Ok(Fields::new(m.clone(), path)),
                    _ => Err(Error::bad(path, "expected an object")),
                }
            })
            .collect()
    }
}

/// A positive numeric `{id}` path segment.
pub(crate) struct IdPath(pub(crate) i64);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::bad("id", "missing id in path"))?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(IdPath(id)),
            _ => Err(Error::bad("id", "must be a positive integer")),
        }
    }
}

/// The field a rejected request names; panics on anything but a bad request.
#[cfg(test)]
pub(crate) fn bad_field<T>(parsed: Result<T>) -> String {
    match parsed {
        Err(Error::BadRequest { field, .. }) => field,
        other => panic!("expected a bad request, got {:?}", other.err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_non_object_bodies_name_body() {
        assert_eq!(bad_field(parse_object(b"{\"a\":")), "body");
        assert_eq!(bad_field(parse_object(b"[1]")), "body");
        assert_eq!(bad_field(parse_object(b"")), "body");
    }

    #[test]
    fn typed_access_names_the_field() {
        let f = parse_object(
            br#"{"name": 5, "blank": "  ", "n": "7", "items": [{"q": 1.5}, 3], "x": null}"#,
        )
        .unwrap();
        assert_eq!(bad_field(f.string("name", 10)), "name");
        assert_eq!(bad_field(f.string("blank", 10)), "blank");
        assert_eq!(bad_field(f.string("missing", 10)), "missing");
        assert_eq!(bad_field(f.string("x", 10)), "x");
        assert_eq!(f.opt_string("x", 10).unwrap(), None);
        assert_eq!(bad_field(f.int("n")), "n");
        assert_eq!(bad_field(f.objects("items")), "items[1]");
        assert_eq!(bad_field(f.deny_unknown(&["name"])), "blank");

        let f = parse_object(br#"{"items": [{"q": 1.5}]}"#).unwrap();
        let items = f.objects("items").unwrap();
        assert_eq!(bad_field(items[0].int("q")), "items[0].q");
        assert_eq!(bad_field(items[0].int("p")), "items[0].p");
        assert_eq!(bad_field(f.string("items", 5)), "items");
    }

    #[test]
    fn countries_are_two_upper_case_letters() {
        let f = parse_object(br#"{"a": "DE", "b": "de", "c": "DEU", "d": "D1", "e": 5}"#).unwrap();
        assert_eq!(f.opt_country("a").unwrap().as_deref(), Some("DE"));
        assert_eq!(f.opt_country("missing").unwrap(), None);
        for name in ["b", "c", "d", "e"] {
            assert_eq!(bad_field(f.opt_country(name)), name);
        }
    }

    #[test]
    fn string_length_is_bounded() {
        let f = parse_object(br#"{"s": "abcdef"}"#).unwrap();
        assert_eq!(f.string("s", 6).unwrap(), "abcdef");
        assert_eq!(bad_field(f.string("s", 5)), "s");
    }
}
