//! A tiny recording HTTP stub for client wire tests: it answers canned JSON per
//! `METHOD /path` and records every request it saw.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the stub answers.
#[derive(Clone)]
pub enum Answer {
    Json(u16, String),
    /// Never answer (for timeout tests).
    Hang,
}

#[derive(Default)]
struct Inner {
    answers: HashMap<String, VecDeque<Answer>>,
    seen: Vec<Seen>,
}

#[derive(Clone, Default)]
pub struct Stub {
    inner: Arc<Mutex<Inner>>,
}

impl Stub {
    /// Queue an answer for `METHOD /path` (path without query). The last queued answer
    /// for a route repeats.
    pub fn answer(&self, route: &str, answer: Answer) -> &Self {
        self.inner
            .lock()
            .unwrap()
            .answers
            .entry(route.to_owned())
            .or_default()
            .push_back(answer);
        self
    }

    pub fn json(&self, route: &str, status: u16, body: &str) -> &Self {
        self.answer(route, Answer::Json(status, body.to_owned()))
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the stub saw a request")
    }

    /// Starts serving on 127.0.0.1:0 and returns the base URL.
    pub async fn serve(&self) -> String {
        let app = Router::new().fallback(handle).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }
}

async fn handle(
    State(stub): State<Stub>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = format!("{} {}", method, uri.path());
    let answer = {
        let mut inner = stub.inner.lock().unwrap();
        inner.seen.push(Seen {
            method: method.to_string(),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers,
            body,
        });
        match inner.answers.get_mut(&route) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        }
    };
    match answer {
        Some(Answer::Json(status, body)) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        Some(Answer::Hang) => std::future::pending().await,
        None => (StatusCode::NOT_FOUND, format!("no stub answer for {route}")).into_response(),
    }
}

/// A `local:` API key whose `sub` is `address` (unsigned: the client never verifies).
pub fn api_key_for(address: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "local:{}.{}.c2ln",
        b64(r#"{"alg":"ES256K"}"#),
        b64(&format!(
            r#"{{"iss":"0x5838B5512cF9f12FE9f2beccB20eb47211F9B0bc","sub":"{address}","jti":"0x01","exp":4102444800,"o11y":"sk-test"}}"#
        ))
    )
}
