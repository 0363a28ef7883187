//! Login: `[sql]`'s user and password, a random session id in a cookie
//! that scripts cannot read (`HttpOnly`) and other sites cannot send
//! (`SameSite=Strict`), and a header every state-changing request must
//! carry (a cross-site form cannot set one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::html;

/// The session cookie's name.
pub const COOKIE: &str = "tributary_ui";
/// The header state-changing requests carry (`X-Tributary: 1`).
pub const CSRF_HEADER: &str = "x-tributary";
/// A wrong password costs this long, so guessing is slow.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(400);

pub(crate) struct Auth {
    user: String,
    /// SHA-256 of the password: compared in constant time.
    password_hash: [u8; 32],
    lifetime: Duration,
    sessions: Mutex<HashMap<String, Instant>>,
}

fn sha(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equal in time independent of where the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(user: String, password: SecretString, lifetime: Duration) -> Auth {
        Auth {
            user,
            password_hash: sha(password.expose_secret()),
            lifetime,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// A new session id when `user` and `password` are right.
    fn login(&self, user: &str, password: &str) -> Option<String> {
        let ok = same(&sha(password), &self.password_hash) && user == self.user;
        if !ok {
            return None;
        }
        let id: [u8; 32] = rand::random();
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        sessions.insert(id.clone(), now + self.lifetime);
        Some(id)
    }

    fn valid(&self, id: &str) -> bool {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.get(id).is_some_and(|e| *e > Instant::now())
    }

    fn logout(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }
}

/// The session id of the request's cookie, if any.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Lets a request with a valid session through; otherwise pages redirect to
/// the login page and the API answers 401. A POST also needs the CSRF header.
pub(crate) async fn require(
    State(state): State<crate::State>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let api = path.starts_with("/api/");
    let logged_in = session_id(request.headers()).is_some_and(|id| state.auth.valid(&id));
    if !logged_in {
        if api || request.method() != Method::GET {
            return (StatusCode::UNAUTHORIZED, "log in first (/login)").into_response();
        }
        let next = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        return Redirect::to(&format!("/login?next={}", html::url_encode(&next))).into_response();
    }
    if request.method() != Method::GET && !request.headers().contains_key(CSRF_HEADER) {
        return (
            StatusCode::FORBIDDEN,
            "a state-changing request needs the X-Tributary header (sent by the console's pages)",
        )
            .into_response();
    }
    next.run(request).await
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

pub(crate) async fn login_page(
    State(state): State<crate::State>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    let body = format!(
        r#"<form id="login" class="login" data-next="{next}">
<h1>tributary</h1>
<label>User <input name="user" autocomplete="username" value="{user}" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required autofocus></label>
<button type="submit">Log in</button>
<p class="error" id="login-error" role="alert"></p>
</form>"#,
        next = html::esc(&next),
        user = html::esc(&state.auth.user)
    );
    html::bare("Log in", "login", &body).into_response()
}

/// Only paths of this server: never a redirect to another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/sql".into(),
    }
}

#[derive(Deserialize)]
pub(crate) struct Login {
    user: String,
    password: String,
}

pub(crate) async fn login(
    State(state): State<crate::State>,
    headers: HeaderMap,
    Json(login): Json<Login>,
) -> Response {
    if !headers.contains_key(CSRF_HEADER) {
        return (StatusCode::FORBIDDEN, "missing the X-Tributary header").into_response();
    }
    match state.auth.login(&login.user, &login.password) {
        Some(id) => {
            let max_age = state.auth.lifetime.as_secs();
            let cookie =
                format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
            ([(header::SET_COOKIE, cookie)], "logged in").into_response()
        }
        None => {
            tracing::info!(user = %login.user, "refused a web console login");
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            (StatusCode::UNAUTHORIZED, "wrong user or password").into_response()
        }
    }
}

pub(crate) async fn logout(State(state): State<crate::State>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        state.auth.logout(&id);
    }
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, expired)], "logged out").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            "tributary".into(),
            SecretString::from("s3cret"),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn only_the_right_user_and_password_log_in() {
        let a = auth();
        assert!(a.login("tributary", "wrong").is_none());
        assert!(a.login("someone", "s3cret").is_none());
        let id = a.login("tributary", "s3cret").expect("logged in");
        assert_eq!(id.len(), 64);
        assert!(a.valid(&id));
        assert!(!a.valid("0000"));
        let other = a.login("tributary", "s3cret").unwrap();
        assert_ne!(id, other, "every login gets a new id");
        a.logout(&id);
        assert!(!a.valid(&id));
        assert!(a.valid(&other));
    }

    #[test]
    fn sessions_expire() {
        let a = Auth::new("u".into(), SecretString::from("p"), Duration::ZERO);
        let id = a.login("u", "p").unwrap();
        assert!(!a.valid(&id));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=1; {COOKIE}=abc; b=2").parse().unwrap(),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn login_redirects_stay_on_this_server() {
        assert_eq!(safe_next(Some("/lake?x=1")), "/lake?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/sql");
        assert_eq!(safe_next(Some("https://evil.example/")), "/sql");
        assert_eq!(safe_next(Some("/\\evil.example")), "/sql");
        assert_eq!(safe_next(None), "/sql");
    }
}
