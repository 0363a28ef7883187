//! HTML: escaping, the page frame and the security headers.
//!
//! Every value that comes from data (table cells, names, errors, alert
//! details) goes through [`esc`]; the script builds the rest of the page
//! with `textContent`, never `innerHTML` of data.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, Response};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes text for a URL's query value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The pages of the navigation bar: (path, name).
const NAV: [(&str, &str); 5] = [
    ("/sql", "SQL"),
    ("/lake", "Lake"),
    ("/pipeline", "Pipeline"),
    ("/workflows", "Workflows"),
    ("/fraud", "Fraud"),
];

/// A page with the navigation bar; `page` names the script's part of it.
pub fn page(title: &str, page: &str, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (path, name) in NAV {
        let current = if path.trim_start_matches('/') == page {
            r#" aria-current="page""#
        } else {
            ""
        };
        nav.push_str(&format!(r#"<a href="{path}"{current}>{name}</a>"#));
    }
    let header = format!(
        r#"<header><nav><span class="brand">tributary</span>{nav}<button id="logout" class="link">Log out</button></nav></header>"#
    );
    layout(title, page, &header, body)
}

/// A page without the navigation bar (the login page).
pub fn bare(title: &str, page: &str, body: &str) -> Html<String> {
    layout(title, page, "", body)
}

fn layout(title: &str, page: &str, header: &str, body: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tributary</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}">
{header}
<main>
{body}
</main>
</body></html>"#,
        title = esc(title),
        page = esc(page),
    ))
}

/// Scripts and styles from this server only, no framing, no sniffing.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A small line chart of `(unix seconds, value)` points as inline SVG, with
/// the newest value beside it; `–` when there are no points. Lags and rates
/// are drawn from zero; counters that only grow (versions) from their
/// lowest value, so a change shows.
pub fn sparkline(points: &[(f64, f64)], digits: usize) -> String {
    spark(points, digits, true)
}

/// [`sparkline`] scaled from the lowest value to the highest.
pub fn sparkline_of_counter(points: &[(f64, f64)], digits: usize) -> String {
    spark(points, digits, false)
}

fn spark(points: &[(f64, f64)], digits: usize, from_zero: bool) -> String {
    let Some(&(_, last)) = points.last() else {
        return r#"<span class="muted">–</span>"#.into();
    };
    let (w, h) = (120.0, 24.0);
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let highest = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let lowest = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let (min, max) = if from_zero {
        (lowest.min(0.0), highest.max(0.0))
    } else {
        (lowest, highest)
    };
    let span_t = (t1 - t0).max(1.0);
    let span_v = (max - min).max(1e-9);
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| {
            format!(
                "{:.1},{:.1}",
                (t - t0) / span_t * w,
                h - 2.0 - (v - min) / span_v * (h - 4.0)
            )
        })
        .collect();
    format!(
        r#"<span class="spark"><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="last {last:.digits$}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{}"/></svg> <span class="num">{last:.digits$}</span></span>"#,
        path.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_data_is_escaped() {
        assert_eq!(
            esc(r#"<img src=x onerror="alert('x')">&"#),
            "&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn urls_are_encoded() {
        assert_eq!(url_encode("/sql?q=a b&c"), "/sql%3Fq%3Da%20b%26c");
    }

    #[test]
    fn a_sparkline_scales_its_points_and_shows_the_last() {
        let svg = sparkline(&[(0.0, 0.0), (10.0, 5.0), (20.0, 10.0)], 1);
        assert!(svg.contains("0.0,22.0 60.0,12.0 120.0,2.0"), "{svg}");
        assert!(svg.contains(">10.0<"), "{svg}");
        assert!(sparkline(&[], 0).contains('–'));
        let counter = sparkline_of_counter(&[(0.0, 40.0), (10.0, 42.0)], 0);
        assert!(counter.contains("0.0,22.0 120.0,2.0"), "{counter}");
    }
}
