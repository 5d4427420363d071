//! The console's assets, embedded at build time (see `build.rs`) and served from memory:
//! content-hashed names for the bundle and the stylesheet (`Cache-Control: immutable`),
//! a strong `ETag` on every asset (`If-None-Match` answers 304), and the brotli or gzip
//! copy made at build time when the request's `Accept-Encoding` takes it.
//!
//! `HERALD_SITE_ROOT` (development only) serves a `cargo leptos watch` site from disk
//! instead, under its plain names and without caching.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

pub struct Embedded {
    pub path: &'static str,
    pub content_type: &'static str,
    pub etag: &'static str,
    pub immutable: bool,
    pub raw: &'static [u8],
    pub br: Option<&'static [u8]>,
    pub gzip: Option<&'static [u8]>,
}

mod types {
    include!("content_type.rs");
}
use types::content_type;

mod generated {
    use super::Embedded;
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}
pub use generated::ASSETS;

/// Where the console's pages find the bundle and the stylesheet.
#[derive(Clone, Debug)]
pub enum Site {
    /// The assets inside the binary.
    Embedded,
    /// A site directory on disk (`HERALD_SITE_ROOT`).
    Dir(PathBuf),
}

impl Site {
    pub fn new(site_root: Option<&str>) -> Self {
        match site_root {
            Some(dir) => Site::Dir(PathBuf::from(dir)),
            None => Site::Embedded,
        }
    }

    /// The `output_name` Leptos's hydration scripts are given.
    pub fn output_name(&self) -> &'static str {
        match self {
            Site::Embedded => generated::OUTPUT_NAME.unwrap_or("herald"),
            Site::Dir(_) => "herald",
        }
    }

    pub fn stylesheet(&self) -> &'static str {
        match self {
            Site::Embedded => generated::STYLESHEET,
            Site::Dir(_) => "/pkg/herald.css",
        }
    }

    /// Whether the console can hydrate: false for a binary built without the bundle.
    pub fn has_bundle(&self) -> bool {
        matches!(self, Site::Dir(_)) || generated::OUTPUT_NAME.is_some()
    }

    /// The asset at `path`, or `None` (the console's own 404 then answers).
    pub async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let response = match self {
            Site::Embedded => {
                let asset = ASSETS.iter().find(|a| a.path == path)?;
                embedded(asset, headers)
            }
            Site::Dir(root) => from_disk(root, path).await?,
        };
        Some(if method == Method::HEAD { head(response) } else { response })
    }
}

fn head(response: Response) -> Response {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Body::empty())
}

/// The encodings a request accepts, from `Accept-Encoding` (`q=0` refuses one).
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            if !name.eq_ignore_ascii_case(coding) {
                return false;
            }
            !parts.any(|p| p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0))
        },
    )
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

pub fn embedded(asset: &Embedded, headers: &HeaderMap) -> Response {
    let cache = if asset.immutable { "public, max-age=31536000, immutable" } else { "public, max-age=300" };
    let mut builder = Response::builder()
        .header(header::ETAG, asset.etag)
        .header(header::CACHE_CONTROL, cache)
        .header(header::VARY, "Accept-Encoding")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if etag_matches(headers, asset.etag) {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).expect("valid response");
    }
    builder = builder.header(header::CONTENT_TYPE, asset.content_type);
    let (body, encoding) = match (asset.br, asset.gzip) {
        (Some(br), _) if accepts(headers, "br") => (br, Some("br")),
        (_, Some(gz)) if accepts(headers, "gzip") => (gz, Some("gzip")),
        _ => (asset.raw, None),
    };
    if let Some(e) = encoding {
        builder = builder.header(header::CONTENT_ENCODING, e);
    }
    builder.header(header::CONTENT_LENGTH, body.len()).body(Body::from(body)).expect("valid response")
}

/// A file under the development site root: plain names, no caching, no escape from it.
async fn from_disk(root: &Path, path: &str) -> Option<Response> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let file = root.join(rel);
    let bytes = tokio::fs::read(&file).await.ok()?;
    let kind = content_type(&file.to_string_lossy());
    Some(
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            bytes,
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn accept_encoding_is_parsed() {
        assert!(accepts(&headers(&[("accept-encoding", "gzip, deflate, br")]), "br"));
        assert!(accepts(&headers(&[("accept-encoding", "GZIP;q=0.5")]), "gzip"));
        assert!(!accepts(&headers(&[("accept-encoding", "br;q=0, gzip")]), "br"));
        assert!(!accepts(&headers(&[("accept-encoding", "brotli")]), "br"));
        assert!(!accepts(&headers(&[]), "gzip"));
    }

    #[test]
    fn etags_match_lists_and_weak_forms() {
        assert!(etag_matches(&headers(&[("if-none-match", "\"a\", \"b\"")]), "\"b\""));
        assert!(etag_matches(&headers(&[("if-none-match", "W/\"b\"")]), "\"b\""));
        assert!(!etag_matches(&headers(&[("if-none-match", "\"c\"")]), "\"b\""));
    }

    #[test]
    fn an_asset_is_served_by_encoding_and_revalidated() {
        let a = Embedded {
            path: "/pkg/x-1.js",
            content_type: "text/javascript; charset=utf-8",
            etag: "\"e1\"",
            immutable: true,
            raw: b"raw",
            br: Some(b"brr"),
            gzip: Some(b"gz"),
        };
        let r = embedded(&a, &headers(&[("accept-encoding", "gzip, br")]));
        assert_eq!(r.headers()["content-encoding"], "br");
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
        assert_eq!(r.headers()["etag"], "\"e1\"");
        let r = embedded(&a, &headers(&[("accept-encoding", "gzip")]));
        assert_eq!(r.headers()["content-encoding"], "gzip");
        let r = embedded(&a, &headers(&[]));
        assert!(r.headers().get("content-encoding").is_none());
        assert_eq!(r.headers()["content-length"], "3");
        let r = embedded(&a, &headers(&[("if-none-match", "\"e1\"")]));
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn the_development_root_does_not_escape() {
        let site = Site::Dir(std::env::temp_dir());
        assert!(site.serve(&Method::GET, "/../etc/passwd", &HeaderMap::new()).await.is_none());
        assert!(site.serve(&Method::GET, "/", &HeaderMap::new()).await.is_none());
    }
}
