//! Credential decoding on its own, with no layer and no I/O.
//!
//! ```text
//! cargo bench --bench credentials
//! ```
//!
//! - `x402_decode`: `decode_x402_token` of a wire-spec §6.3 envelope (base64 JSON).
//! - `x402_extract`: `extract_credential` from request headers (finds and decodes it).
//! - `bearer_verify`: `BearerVerifier::verify` of an EdDSA (Ed25519) access token.
//! - `token_digest`: the SHA-256 digest the layer keys its verification cache by, the
//!   only per-token work on its hot path.
#![allow(unreachable_pub)] // helpers shared between test and bench binaries by path

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use nvm_payments::credential::{
    decode_x402_token, default_token_headers, extract_credential, BearerVerifier,
};
use nvm_payments::types::TokenDigest;

#[path = "../tests/support/sink.rs"]
mod support;
use support::{bearer_jwks, bearer_token, holder, x402_token};

fn credentials(c: &mut Criterion) {
    let mut group = c.benchmark_group("credentials");
    let x402 = x402_token(&holder(1), None);
    let bearer = bearer_token(&holder(1));
    println!(
        "token sizes: x402 {} bytes, bearer {} bytes",
        x402.len(),
        bearer.len()
    );

    group.bench_function("x402_decode", |b| {
        b.iter(|| decode_x402_token(black_box(&x402)).unwrap())
    });

    let names = default_token_headers();
    let mut headers = HeaderMap::new();
    headers.insert("payment-signature", HeaderValue::try_from(&x402).unwrap());
    group.bench_function("x402_extract", |b| {
        b.iter(|| extract_credential(black_box(&headers), &names).unwrap())
    });

    let verifier = BearerVerifier::from_jwks(&bearer_jwks()).unwrap();
    verifier.verify(&bearer).expect("the bench token verifies");
    group.bench_function("bearer_verify", |b| {
        b.iter(|| verifier.verify(black_box(&bearer)).unwrap())
    });

    group.bench_function("token_digest", |b| {
        b.iter(|| TokenDigest::of(black_box(x402.as_bytes())))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = credentials
}
criterion_main!(benches);
