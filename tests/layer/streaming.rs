//! `ChargeTiming::OnBodyEnd`: a stream passes through frame by frame and is charged
//! after its last frame; a body dropped before its end is not charged.
#![cfg(feature = "devserver")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use crate::support::layer_mock::*;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use nvm_payments::{ChargeTiming, SettleStatus};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};

type Sse = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// An SSE handler whose events come from the test, one by one.
fn sse_handler(
    events: mpsc::UnboundedReceiver<&'static str>,
) -> impl tower::Service<
    http::Request<TestBody>,
    Response = Response<Sse>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let events = Arc::new(Mutex::new(Some(events)));
    tower::service_fn(move |_req: http::Request<TestBody>| {
        let rx = events.lock().unwrap().take().expect("one request");
        async move {
            let frames = stream::unfold(rx, |mut rx| async move {
                let event = rx.recv().await?;
                Some((
                    Ok(Frame::data(Bytes::from(format!("data: {event}\n\n")))),
                    rx,
                ))
            })
            .boxed();
            let mut res = Response::new(StreamBody::new(frames));
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok(res)
        }
    })
}

#[tokio::test]
async fn sse_streams_frame_by_frame_and_is_charged_after_the_last_frame() {
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::OnBodyEnd)
        .on_settle(hook)
        .build()
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let response = layer
        .layer(sse_handler(rx))
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    for event in ["one", "two", "three"] {
        // The handler is still producing: each frame arrives as it is sent.
        tx.send(event).unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, format!("data: {event}\n\n"));
        assert_eq!(backend.charge_calls(), 0, "not charged before the end");
        assert!(outcomes.try_recv().is_err());
    }
    drop(tx); // the stream ends
    assert!(body.frame().await.is_none());
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    assert_eq!(backend.charged_ids(), 1);
    assert_eq!(backend.remaining(), nvm_payments::Credits::from(98u64));
}

#[tokio::test]
async fn a_stream_dropped_before_its_end_is_not_charged() {
    let backend = MockBackend::new(2);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::OnBodyEnd)
        .on_settle(hook)
        .build()
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let response = layer
        .layer(sse_handler(rx))
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    let mut body = response.into_body();
    tx.send("partial").unwrap();
    assert!(body.frame().await.unwrap().is_ok());
    drop(body); // the client went away

    // Balance 2, charge 2: this request is admitted only if the aborted one's
    // reservation was released; its outcome is the first and only one reported.
    let full = layer
        .layer(Inner::ok().service())
        .oneshot(bearer_request(bearer(PLAN, Some(AGENT))))
        .await
        .unwrap();
    assert_eq!(full.status(), 200);
    full.into_body().collect().await.unwrap();
    let outcome = outcomes.recv().await.unwrap();
    assert_eq!(outcome.status, SettleStatus::Settled);
    assert_eq!(
        backend.charge_calls(),
        1,
        "only the complete response was charged"
    );
    assert!(outcomes.try_recv().is_err());
}

#[tokio::test]
async fn a_body_whose_last_frame_says_end_of_stream_is_charged_without_another_poll() {
    // `Full` reports end-of-stream with its only frame; servers stop polling there.
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::OnBodyEnd)
        .on_settle(hook)
        .build()
        .unwrap();
    let response = layer
        .layer(Inner::ok().service())
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "served"
    );
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    assert_eq!(backend.charged_ids(), 1);
}

#[tokio::test]
async fn an_empty_body_is_charged_although_nobody_polls_it() {
    let backend = MockBackend::new(100);
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::OnBodyEnd)
        .on_settle(hook)
        .build()
        .unwrap();
    let empty = tower::service_fn(|_req: http::Request<TestBody>| async {
        let mut res = Response::new(http_body_util::Full::new(Bytes::new()));
        *res.status_mut() = http::StatusCode::NO_CONTENT;
        Ok::<_, Infallible>(res)
    });
    let response = layer
        .layer(empty)
        .oneshot(x402_request(valid_x402()))
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // The body is never polled, as a server does with an end-of-stream body.
    assert_eq!(outcomes.recv().await.unwrap().status, SettleStatus::Settled);
    drop(response);
    assert_eq!(backend.charged_ids(), 1);
}
