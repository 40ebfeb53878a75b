//! The `payment-response` header: standard base64 of the settle receipt's JSON.
//!
//! Written by hand into one pre-sized buffer: it is built on every charged request, and
//! serde's round trip plus two growing buffers were most of its cost (BENCHMARKS.md).
//! The JSON is the one serde would write for [`SettleResponse`] (a unit test holds them
//! equal).

use std::fmt::Write;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;

use crate::types::{Credits, SettleResponse};

/// The header value of `receipt`, or `None` if it cannot be one (never, in practice:
/// base64 is always a valid header value).
pub(crate) fn receipt_header(receipt: &SettleResponse) -> Option<HeaderValue> {
    // A buffer of this thread's, reused: the JSON only lives until it is encoded.
    let reused = JSON.try_with(|buffer| {
        let mut json = buffer.try_borrow_mut().ok()?;
        json.clear();
        write_json(&mut json, receipt);
        let header = encode(&json);
        if json.capacity() > MAX_KEPT {
            // One huge receipt must not pin its buffer to the thread for ever.
            *json = String::new();
        }
        Some(header)
    });
    match reused {
        Ok(Some(header)) => header,
        // The thread is exiting, or (never) the buffer is in use: a buffer of its own.
        _ => encode(&receipt_json(receipt)),
    }
}

fn encode(json: &str) -> Option<HeaderValue> {
    let len = base64::encoded_len(json.len(), true)?;
    // Encoded on the stack and copied once: a zeroed heap buffer to encode into cost
    // a `calloc` of its whole length, and a `String` sink a UTF-8 check of it.
    let mut stack = [0u8; STACK_ENCODED];
    let encoded = if len <= STACK_ENCODED {
        let written = STANDARD.encode_slice(json.as_bytes(), &mut stack).ok()?;
        Bytes::copy_from_slice(stack.get(..written)?)
    } else {
        Bytes::from(STANDARD.encode(json.as_bytes()))
    };
    HeaderValue::from_maybe_shared(encoded).ok()
}

/// Receipts up to this many base64 bytes (every settle receipt seen: ≈ 450) are
/// encoded on the stack.
const STACK_ENCODED: usize = 768;

thread_local! {
    static JSON: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Largest JSON buffer a thread keeps between receipts.
const MAX_KEPT: usize = 4_096;

fn receipt_json(r: &SettleResponse) -> String {
    let mut out = String::new();
    write_json(&mut out, r);
    out
}

fn write_json(out: &mut String, r: &SettleResponse) {
    out.reserve(
        160 + r.transaction.len()
            + r.network.len()
            + r.error_reason.as_ref().map_or(0, String::len)
            + r.order_tx.as_ref().map_or(0, String::len),
    );
    out.push_str(if r.success {
        "{\"success\":true"
    } else {
        "{\"success\":false"
    });
    if let Some(reason) = &r.error_reason {
        field(out, "errorReason", reason);
    }
    if let Some(payer) = &r.payer {
        field(out, "payer", payer.as_str());
    }
    field(out, "transaction", &r.transaction);
    field(out, "network", &r.network);
    if let Some(credits) = &r.credits_redeemed {
        amount(out, "creditsRedeemed", credits);
    }
    if let Some(credits) = &r.remaining_balance {
        amount(out, "remainingBalance", credits);
    }
    if let Some(tx) = &r.order_tx {
        field(out, "orderTx", tx);
    }
    out.push('}');
}

/// `,"name":"digits"`: decimal digits only, nothing to escape. An amount that fits in
/// 64 bits (almost all) is written without the formatting machinery.
fn amount(out: &mut String, name: &str, credits: &Credits) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":\"");
    match credits.to_u64() {
        Some(mut n) => {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            loop {
                at -= 1;
                // `n % 10` is below 10: the cast cannot truncate.
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for &d in &digits[at..] {
                out.push(char::from(d));
            }
        }
        None => {
            let _ = write!(out, "{credits}");
        }
    }
    out.push('"');
}

/// `,"name":"value"` with `value` escaped as JSON requires.
fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":\"");
    // Branch-free, so that it vectorises (a transaction hash, an address: every byte
    // is read on every request).
    let needs_escape = value.bytes().fold(0u8, |seen, b| {
        seen | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    });
    if needs_escape != 0 {
        escape_into(out, value);
    } else {
        // Hashes, networks, addresses: nothing to escape, one copy.
        out.push_str(value);
    }
    out.push('"');
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Address, Credits};

    fn receipts() -> Vec<SettleResponse> {
        let full = SettleResponse {
            success: true,
            error_reason: None,
            payer: Some(Address::zero()),
            transaction: "0xabc".to_owned(),
            network: "eip155:84532".to_owned(),
            credits_redeemed: Some(Credits::from(2u64)),
            remaining_balance: Some(Credits::MAX),
            order_tx: Some("0xdef".to_owned()),
        };
        let refused = SettleResponse {
            success: false,
            error_reason: Some("BCK.X402.0059: \"spent\" \\ \n\t\u{1}é✓".to_owned()),
            payer: None,
            transaction: String::new(),
            network: String::new(),
            credits_redeemed: None,
            remaining_balance: None,
            order_tx: None,
        };
        let mut all = vec![full.clone(), refused];
        // Every digit count of the 64-bit path, its edges, and past them.
        let u64_max = Credits::from(u64::MAX);
        let past = u64_max.saturating_add(Credits::from(1u64));
        let mut amounts = vec![Credits::ZERO, u64_max, past];
        amounts.extend((0..20).map(|p| Credits::from(10u64.pow(p))));
        amounts.extend((1..20).map(|p| Credits::from(10u64.pow(p) - 1)));
        for credits in amounts {
            all.push(SettleResponse {
                credits_redeemed: Some(credits),
                remaining_balance: Some(credits),
                ..full.clone()
            });
        }
        all
    }

    #[test]
    fn the_hand_written_json_is_serdes() {
        for receipt in receipts() {
            let ours: serde_json::Value = serde_json::from_str(&receipt_json(&receipt)).unwrap();
            assert_eq!(ours, serde_json::to_value(&receipt).unwrap());
            let header = receipt_header(&receipt).unwrap();
            let decoded = STANDARD.decode(header.as_bytes()).unwrap();
            let back: SettleResponse = serde_json::from_slice(&decoded).unwrap();
            assert_eq!(back, receipt);
        }
    }
}
