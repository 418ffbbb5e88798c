//! The dashboard's static files, embedded in the binary: the vendored htmx, its SSE extension
//! and Pico CSS (pinned versions, licences beside them in `web/vendor/`), and our own stylesheet,
//! script and icon. Each is served under a name carrying a hash of its content, so browsers may
//! keep it for a year and still never run a stale copy.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    /// The name before hashing: `htmx.min.js` is served as `htmx.min.<hash>.js`.
    name: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static FILES: &[Asset] = &[
    Asset {
        name: "pico.min.css",
        mime: CSS,
        bytes: include_bytes!("../../web/vendor/pico-2.1.1/pico.min.css"),
    },
    Asset {
        name: "htmx.min.js",
        mime: JS,
        bytes: include_bytes!("../../web/vendor/htmx-2.0.11/htmx.min.js"),
    },
    Asset {
        name: "sse.min.js",
        mime: JS,
        bytes: include_bytes!("../../web/vendor/htmx-ext-sse-2.2.4/sse.min.js"),
    },
    Asset {
        name: "coffer.css",
        mime: CSS,
        bytes: include_bytes!("../../web/static/coffer.css"),
    },
    Asset {
        name: "coffer.js",
        mime: JS,
        bytes: include_bytes!("../../web/static/coffer.js"),
    },
    Asset {
        name: "icon.svg",
        mime: "image/svg+xml",
        bytes: include_bytes!("../../web/static/icon.svg"),
    },
];

/// `name.<first 12 hex digits of its SHA-256>.ext`
fn hashed_name(asset: &Asset) -> String {
    let digest = hex::encode(Sha256::digest(asset.bytes));
    let hash = &digest[..12];
    match asset.name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{}.{hash}", asset.name),
    }
}

static SERVED: LazyLock<Vec<(String, &'static Asset)>> =
    LazyLock::new(|| FILES.iter().map(|a| (hashed_name(a), a)).collect());

fn url_of(name: &str) -> String {
    SERVED
        .iter()
        .find(|(_, a)| a.name == name)
        .map(|(served, _)| format!("/assets/{served}"))
        .unwrap_or_default()
}

/// The URLs of the assets, as the pages link them.
#[derive(Debug)]
pub struct AssetUrls {
    pub pico: String,
    pub htmx: String,
    pub sse: String,
    pub css: String,
    pub js: String,
    pub icon: String,
}

pub static URLS: LazyLock<AssetUrls> = LazyLock::new(|| AssetUrls {
    pico: url_of("pico.min.css"),
    htmx: url_of("htmx.min.js"),
    sse: url_of("sse.min.js"),
    css: url_of("coffer.css"),
    js: url_of("coffer.js"),
    icon: url_of("icon.svg"),
});

/// `GET /assets/{file}`: an asset by its hashed name, cacheable for a year.
pub async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, asset)) = SERVED.iter().find(|(served, _)| *served == file) else {
        return super::not_found().into_response();
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.mime)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_hashed_url() {
        let urls = [
            &URLS.pico, &URLS.htmx, &URLS.sse, &URLS.css, &URLS.js, &URLS.icon,
        ];
        for url in urls {
            assert!(url.starts_with("/assets/"), "{url}");
        }
        let mut unique: Vec<_> = urls.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), urls.len());
        assert!(URLS.htmx.ends_with(".js") && URLS.htmx.contains("htmx.min."));
    }
}
