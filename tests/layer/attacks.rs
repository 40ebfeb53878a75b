//! The ways to be served without paying that an adversarial review found, each tried
//! as the attacker would through `PaymentLayer` over the mock backend (whose settle
//! consumes a v3 nonce once, as the hosted backend does), and shown to fail now.
#![cfg(feature = "devserver")] // ed25519-dalek signs the bearer tokens

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::layer_mock::*;
use crate::support::reliability::Logs;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nvm_payments::{ChargeTiming, Credits, PendingFull};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

fn post(path: &str, header: Option<(&str, String)>) -> Request<TestBody> {
    let mut b = Request::post(path);
    if let Some((name, value)) = header {
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// One request through a fresh service of `layer` over `inner`.
async fn send(
    layer: &nvm_payments::PaymentLayer,
    inner: &Inner,
    request: Request<TestBody>,
) -> Response<nvm_payments::layer::PaymentBody<TestBody>> {
    layer.layer(inner.service()).oneshot(request).await.unwrap()
}

async fn error_code(response: Response<nvm_payments::layer::PaymentBody<TestBody>>) -> String {
    body_json(response.into_body())
        .await
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or_default()
        .to_owned()
}

// ---------- 1. a spent v3 token once the spent set is full ----------

#[tokio::test]
async fn a_spent_v3_token_is_refused_even_when_the_spent_set_is_full() {
    let backend = MockBackend::new(1_000);
    let layer = builder(backend.clone())
        .verification_cache(Duration::from_secs(60), 8)
        .build()
        .unwrap();
    let inner = Inner::ok();
    // Fill the set: 7 tokens, each paid once, then the attacker's token.
    for n in 0..7 {
        let response = send(
            &layer,
            &inner,
            x402_request(x402_v3(&format!("filler-{n}"))),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let token = x402_v3("attacker");
    let first = send(&layer, &inner, x402_request(token.clone())).await;
    assert_eq!(first.status(), 200);
    assert_eq!(layer.cache_sizes().await.spent_single_use_tokens, 8);

    for _ in 0..5 {
        let replay = send(&layer, &inner, x402_request(token.clone())).await;
        assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(error_code(replay).await, "invalid_token");
    }
    assert_eq!(inner.calls(), 8, "no replay reached the handler");
    assert_eq!(backend.charge_calls(), 8, "no replay was settled");
    assert_eq!(backend.charged_ids(), 8);

    // A new token while the set is full of tokens spent within the verification TTL:
    // "retry later", never admitted unguarded.
    let fresh = send(&layer, &inner, x402_request(x402_v3("fresh"))).await;
    assert_eq!(fresh.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.calls(), 8);
}

#[tokio::test]
async fn a_v3_token_the_backend_already_consumed_gets_402_and_no_work() {
    let backend = MockBackend::new(1_000);
    // Spent elsewhere: another replica, or this process before a restart.
    backend.spent_nonces.lock().unwrap().insert("used".into());
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone()).on_settle(hook).build().unwrap();
    let inner = Inner::ok();
    let token = x402_v3("used");
    let first = send(&layer, &inner, x402_request(token.clone())).await;
    assert_eq!(first.status(), StatusCode::PAYMENT_REQUIRED);
    let body = body_json(first.into_body()).await;
    assert_eq!(body["error"], "invalid_token", "{body}");
    assert_eq!(
        outcomes.recv().await.unwrap().status,
        nvm_payments::SettleStatus::Failed
    );
    for _ in 0..3 {
        let replay = send(&layer, &inner, x402_request(token.clone())).await;
        assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
    }
    assert_eq!(
        inner.calls(),
        1,
        "the handler ran once, its answer withheld"
    );
    assert_eq!(backend.charge_calls(), 1, "replays never reach settle");
}

#[tokio::test]
async fn a_v3_token_whose_background_charge_failed_is_not_admitted_again() {
    let backend = MockBackend::new(1_000);
    backend.spent_nonces.lock().unwrap().insert("used".into());
    let (hook, mut outcomes) = outcomes();
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::Background)
        .on_settle(hook)
        .build()
        .unwrap();
    let inner = Inner::ok();
    let token = x402_v3("used");
    let first = send(&layer, &inner, x402_request(token.clone())).await;
    assert_eq!(first.status(), 200, "the response left before the charge");
    assert_eq!(
        outcomes.recv().await.unwrap().status,
        nvm_payments::SettleStatus::Failed
    );
    for _ in 0..3 {
        let replay = send(&layer, &inner, x402_request(token.clone())).await;
        assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
    }
    assert_eq!(
        inner.calls(),
        1,
        "a failed charge does not free the token again"
    );
    assert_eq!(backend.charge_calls(), 1);
}

// ---------- 2. one v3 token under several spellings ----------

#[tokio::test]
async fn three_spellings_of_one_v3_token_sent_at_once_are_served_once() {
    let backend = MockBackend::new(1_000);
    let layer = builder(backend.clone()).build().unwrap();
    let inner = Inner::ok();
    let envelope = x402_envelope(SUBSCRIBER, Some("nonce-1"));
    let compact = envelope.to_string();
    let spaced = serde_json::to_string_pretty(&envelope).unwrap();
    let spellings = [
        URL_SAFE_NO_PAD.encode(&compact),
        STANDARD.encode(&compact),
        STANDARD.encode(&spaced),
    ];
    let responses = futures_util::future::join_all(
        spellings
            .iter()
            .map(|t| send(&layer, &inner, x402_request(t.clone()))),
    )
    .await;
    let served = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(served, 1);
    assert_eq!(inner.calls(), 1);
    assert_eq!(backend.charge_calls(), 1);
    assert!(
        backend.verifies() <= 2,
        "two base64 spellings of one text share a verification"
    );
    // And one after the other.
    for t in &spellings {
        let replay = send(&layer, &inner, x402_request(t.clone())).await;
        assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
    }
    assert_eq!(inner.calls(), 1);
    assert_eq!(backend.charged_ids(), 1);
}

// ---------- 3. a reservation outlives its ledger's place in the cache ----------

/// An inner service that holds the requests carrying `x-hold` until a permit is
/// added, and tells when one is being held.
#[derive(Clone)]
struct Holding {
    calls: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
    held: Arc<tokio::sync::Notify>,
}

impl Holding {
    fn new() -> Self {
        Holding {
            calls: Arc::new(AtomicUsize::new(0)),
            permits: Arc::new(Semaphore::new(0)),
            held: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<TestBody>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        tower::service_fn(move |req: Request<TestBody>| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                if req.headers().contains_key("x-hold") {
                    this.held.notify_one();
                    this.permits.acquire().await.unwrap().forget();
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"served"))))
            }
        })
    }
}

const HOLDER: &str = "0x2222222222222222222222222222222222222222";

#[tokio::test]
async fn a_reservation_held_while_its_ledger_is_evicted_still_counts() {
    let backend = MockBackend::new(1_000_000);
    backend
        .holders
        .lock()
        .unwrap()
        .insert(HOLDER.parse().unwrap(), Credits::from(2u64));
    // Room for two ledgers, kept busy by two other subscribers.
    let layer = builder(backend.clone())
        .balance_cache(Duration::from_secs(30), 2)
        .build()
        .unwrap();
    let inner = Holding::new();
    let mut held = post("/ask", Some(("payment-signature", x402_from(HOLDER))));
    held.headers_mut().insert("x-hold", "1".parse().unwrap());
    let service = layer.layer(inner.service());
    let first = tokio::spawn(service.clone().oneshot(held));
    inner.held.notified().await;

    let others = [
        "0x3333333333333333333333333333333333333333",
        "0x4444444444444444444444444444444444444444",
    ];
    for _ in 0..10 {
        for other in others {
            let r = service
                .clone()
                .oneshot(post("/ask", Some(("payment-signature", x402_from(other)))))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    layer.cache_sizes().await; // let the cache evict now

    for _ in 0..4 {
        let r = service
            .clone()
            .oneshot(post("/ask", Some(("payment-signature", x402_from(HOLDER)))))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(error_code(r).await, "insufficient_balance");
    }
    inner.permits.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        backend.balance_of(&HOLDER.parse().unwrap()),
        Credits::ZERO,
        "the one admitted request was paid"
    );
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1 + 20);
}

// ---------- 4. the agent's own credential failing ----------

#[tokio::test]
async fn verify_refusing_the_agents_own_key_is_an_outage_logged_at_error() {
    let backend = MockBackend::with(100, |m| {
        m.verify_mode = Mutex::new(VerifyMode::Error(401, "BCK.APIKEY.0004"));
    });
    let layer = builder(backend.clone()).build().unwrap();
    let inner = Inner::ok();
    let logs = Logs::default();
    let guard = logs.capture();
    let token = valid_x402();
    let r = send(&layer, &inner, x402_request(token.clone())).await;
    drop(guard);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, "backend_unavailable");
    assert_eq!(inner.calls(), 0);
    let text = logs.text();
    assert!(
        text.contains("ERROR") && text.contains("BCK.APIKEY.0004"),
        "{text}"
    );
    assert!(!text.contains(&token), "the token is never logged");

    // The key is fixed: the same token is verified again at once, not remembered as bad.
    *backend.verify_mode.lock().unwrap() = VerifyMode::BySignature;
    let r = send(&layer, &inner, x402_request(token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(backend.verifies(), 2);
}

#[tokio::test]
async fn verify_answering_404_is_a_misconfiguration_not_a_bad_token() {
    let backend = MockBackend::with(100, |m| {
        m.verify_mode = Mutex::new(VerifyMode::Error(404, "http_404"));
    });
    let layer = builder(backend.clone()).build().unwrap();
    let inner = Inner::ok();
    let r = send(&layer, &inner, x402_request(valid_x402())).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(r).await, "payment_misconfigured");
    let again = send(&layer, &inner, x402_request(valid_x402())).await;
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        backend.verifies(),
        2,
        "not remembered as a verdict on the token"
    );
    assert_eq!(inner.calls(), 0);
}

// ---------- 5. a JWKS outage ----------

#[tokio::test(start_paused = true)]
async fn a_failing_jwks_is_fetched_once_per_back_off_window() {
    let backend = MockBackend::new(100);
    *backend.jwks_down.lock().unwrap() = true;
    let layer = builder(backend.clone()).build().unwrap();
    let inner = Inner::ok();
    let responses = futures_util::future::join_all(
        (0..10).map(|n| send(&layer, &inner, bearer_request(bearer_valid_for(3600 + n)))),
    )
    .await;
    for r in responses {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(backend.jwks_calls.load(Ordering::SeqCst), 1);

    // Within the window: refused without another fetch.
    let r = send(&layer, &inner, bearer_request(bearer_valid_for(7200))).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.jwks_calls.load(Ordering::SeqCst), 1);

    // After it, the issuer is back: one fetch, served.
    *backend.jwks_down.lock().unwrap() = false;
    tokio::time::advance(Duration::from_millis(1_100)).await;
    let r = send(&layer, &inner, bearer_request(bearer_valid_for(7300))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(backend.jwks_calls.load(Ordering::SeqCst), 2);
    assert_eq!(inner.calls(), 1);
}

// ---------- 6. callers controlling facilitator calls and memory ----------

#[tokio::test]
async fn forged_tokens_cost_at_most_the_configured_concurrent_verify_calls() {
    let permits = Arc::new(Semaphore::new(0));
    let backend = MockBackend::with(100, |m| m.verify_permits = Some(permits.clone()));
    let layer = builder(backend.clone())
        .max_concurrent_verifications(4)
        .build()
        .unwrap();
    let inner = Inner::ok();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..20 {
        let service = layer.layer(inner.service());
        let tx = tx.clone();
        tokio::spawn(async move {
            let token = x402_token(PLAN, Some(AGENT), &format!("0xforged{n}"));
            let r = service.oneshot(x402_request(token)).await.unwrap();
            let _ = tx.send(r.status());
        });
    }
    // 16 come back at once, refused as "retry later"; 4 wait on the facilitator.
    for _ in 0..16 {
        assert_eq!(rx.recv().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(backend.verifies(), 4);
    permits.add_permits(100);
    for _ in 0..4 {
        assert_eq!(rx.recv().await.unwrap(), StatusCode::PAYMENT_REQUIRED);
    }
    assert_eq!(backend.verify_peak.load(Ordering::SeqCst), 4);
    assert_eq!(inner.calls(), 0);
}

/// A valid token of about 8 KiB (padded with session keys), distinct for each `n`.
fn big_token(n: usize) -> String {
    let mut envelope = x402_envelope(SUBSCRIBER, None);
    envelope["payload"]["authorization"]["sessionKeys"] =
        serde_json::json!([format!("{n:06}{}", "k".repeat(5_800))]);
    let token = URL_SAFE_NO_PAD.encode(envelope.to_string());
    assert!(
        token.len() > 7_900 && token.len() <= 8 * 1024,
        "{}",
        token.len()
    );
    token
}

#[tokio::test]
async fn the_verification_cache_stays_within_its_byte_budget_with_8_kib_tokens() {
    let backend = MockBackend::new(1_000_000);
    let budget = 256 * 1024;
    let layer = builder(backend.clone())
        .verification_cache_bytes(budget)
        .build()
        .unwrap();
    let inner = Inner::ok();
    for n in 0..100 {
        let r = send(&layer, &inner, x402_request(big_token(n))).await;
        assert_eq!(r.status(), 200);
    }
    let sizes = layer.cache_sizes().await;
    assert!(sizes.verification_bytes <= budget, "{sizes:?}");
    assert!(
        sizes.verifications >= 1 && sizes.verifications <= 16,
        "{sizes:?}"
    );
}

#[tokio::test]
async fn requests_that_cannot_be_charged_leave_no_route_and_no_verification() {
    let backend = MockBackend::new(1_000);
    let layer = builder(backend.clone()).build().unwrap();
    let not_found = Inner::status(StatusCode::NOT_FOUND);
    let token = valid_x402();
    for n in 0..50 {
        let path = format!("/junk/{n}");
        let r = send(
            &layer,
            &not_found,
            post(&path, Some(("payment-signature", token.clone()))),
        )
        .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // Unauthenticated junk never even reaches the handler.
        let r = send(&layer, &not_found, post(&format!("/anon/{n}"), None)).await;
        assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    }
    let sizes = layer.cache_sizes().await;
    assert_eq!(sizes.routes, 0, "{sizes:?}");
    assert_eq!(sizes.verifications, 0, "{sizes:?}");
    assert_eq!(backend.charge_calls(), 0);

    let ok = Inner::ok();
    let r = send(&layer, &ok, x402_request(token)).await;
    assert_eq!(r.status(), 200);
    let sizes = layer.cache_sizes().await;
    assert_eq!((sizes.routes, sizes.verifications), (1, 1), "{sizes:?}");
}

#[tokio::test]
async fn a_non_subscribers_genuine_token_is_remembered_as_refused_for_a_moment() {
    let backend = MockBackend::new(1_000);
    let broke = "0x5555555555555555555555555555555555555555";
    backend
        .holders
        .lock()
        .unwrap()
        .insert(broke.parse().unwrap(), Credits::ZERO);
    let layer = builder(backend.clone())
        // Long enough that no scheduling hiccup can end it during the test.
        .recheck_balance_before_refusing(Duration::from_secs(3_600))
        .build()
        .unwrap();
    let inner = Inner::ok();
    for _ in 0..5 {
        let r = send(&layer, &inner, x402_request(x402_from(broke))).await;
        assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(error_code(r).await, "insufficient_balance");
    }
    assert_eq!(backend.verifies(), 1);
    assert_eq!(inner.calls(), 0);
}

// ---------- 7. unread streams and the pending-charge bound ----------

#[tokio::test]
async fn unread_streams_do_not_use_up_the_pending_charge_bound() {
    let backend = MockBackend::new(1_000);
    let layer = builder(backend.clone())
        .charge_timing(ChargeTiming::OnBodyEnd)
        .pending_charges(2, PendingFull::Reject)
        .build()
        .unwrap();
    let inner = Inner::ok();
    let mut unread = Vec::new();
    for _ in 0..2 {
        let r = send(&layer, &inner, x402_request(valid_x402())).await;
        assert_eq!(r.status(), 200);
        unread.push(r);
    }
    assert_eq!(
        layer.pending_charges(),
        0,
        "nothing is sent while streams are unread"
    );
    let third = send(&layer, &inner, x402_request(valid_x402())).await;
    assert_eq!(third.status(), 200, "other callers are not refused");
    unread.push(third);
    for r in unread {
        r.into_body().collect().await.unwrap();
    }
    layer.drain(Duration::from_secs(30)).await;
    assert_eq!(
        backend.charged_ids(),
        3,
        "each stream read to its end is charged"
    );
}

// ---------- the cache's fast hash: a collision costs a miss, never a mix-up ----------

#[tokio::test]
async fn tokens_whose_cache_hashes_collide_are_never_confused() {
    let alice = "0x6666666666666666666666666666666666666666";
    let bob = "0x7777777777777777777777777777777777777777";
    let backend = MockBackend::new(1_000);
    for holder in [alice, bob] {
        backend
            .holders
            .lock()
            .unwrap()
            .insert(holder.parse().unwrap(), Credits::from(10u64));
    }
    // Every token gets the same verification-cache hash.
    let layer = builder(backend.clone())
        .collide_token_hashes_for_tests()
        .build()
        .unwrap();
    let inner = Inner::ok();
    let forged = x402_token(PLAN, Some(AGENT), "0xforged");
    for _ in 0..3 {
        for token in [x402_from(alice), x402_from(bob)] {
            let r = send(&layer, &inner, x402_request(token)).await;
            assert_eq!(r.status(), 200);
        }
        let r = send(&layer, &inner, x402_request(forged.clone())).await;
        assert_eq!(
            r.status(),
            StatusCode::PAYMENT_REQUIRED,
            "never admitted as another"
        );
    }
    assert_eq!(inner.calls(), 6);
    // Each paid for its own three requests (2 credits each), never for the other's.
    for holder in [alice, bob] {
        assert_eq!(
            backend.balance_of(&holder.parse().unwrap()),
            Credits::from(4u64),
            "{holder}"
        );
    }
}
