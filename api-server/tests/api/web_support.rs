//! The browser the web dashboard tests drive: keeps cookies, finds CSRF tokens in pages,
//! posts forms. Shared by web.rs and web_access.rs.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};

use crate::helpers::{PASSWORD, TestApp};

/// A browser as far as the server can tell: keeps cookies, finds CSRF tokens in pages.
pub(crate) struct Browser<'a> {
    pub(crate) app: &'a TestApp,
    pub(crate) cookies: BTreeMap<String, String>,
    pub(crate) csrf: String,
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

pub(crate) fn csrf_in(body: &str) -> Option<String> {
    let at = body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let end = body[at..].find('"')?;
    Some(body[at..at + end].to_owned())
}

impl<'a> Browser<'a> {
    pub(crate) fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            cookies: BTreeMap::new(),
            csrf: String::new(),
        }
    }

    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<String>,
        extra: &[(&str, &str)],
    ) -> Page {
        let mut builder = Request::builder().method(method).uri(path);
        if !self.cookies.is_empty() {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            builder = builder.header("cookie", cookie.join("; "));
        }
        for (k, v) in extra {
            builder = builder.header(*k, *v);
        }
        let request = match form {
            Some(form) => builder
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(form)),
            None => builder.body(Body::empty()),
        }
        .expect("request");
        let response = self.app.send(request).await;
        for set in response.headers.get_all("set-cookie") {
            let set = set.to_str().expect("cookie");
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let body = response.text();
        if let Some(token) = csrf_in(&body) {
            self.csrf = token;
        }
        Page {
            status: response.status,
            headers: response.headers,
            body,
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        self.request(Method::GET, path, None, &[]).await
    }

    /// Posts a form with the CSRF token of the last page seen.
    pub(crate) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut form: Vec<(String, String)> = vec![("csrf".into(), self.csrf.clone())];
        form.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.request(Method::POST, path, Some(body), &[]).await
    }

    pub(crate) async fn sign_up(&mut self, email: &str) {
        self.get("/signup").await;
        let page = self
            .post(
                "/signup",
                &[("name", "Ann"), ("email", email), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        // A page of the session, for its CSRF token.
        self.get("/settings").await;
    }

    pub(crate) async fn sign_in(&mut self, email: &str) -> Page {
        self.get("/login").await;
        let page = self
            .post("/login", &[("email", email), ("password", PASSWORD)])
            .await;
        self.get("/settings").await;
        page
    }

    pub(crate) fn session_cookie(&self) -> Option<&String> {
        self.cookies
            .iter()
            .find(|(k, _)| k.ends_with("coffer_session"))
            .map(|(_, v)| v)
    }
}
