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

use crate::types::SettleResponse;

/// The header value of `receipt`, or `None` if it cannot be one (never, in practice:
/// base64 is always a valid header value).
pub(crate) fn receipt_header(receipt: &SettleResponse) -> Option<HeaderValue> {
    let json = receipt_json(receipt);
    let mut encoded = vec![0u8; base64::encoded_len(json.len(), true)?];
    let written = STANDARD.encode_slice(json.as_bytes(), &mut encoded).ok()?;
    encoded.truncate(written);
    HeaderValue::from_maybe_shared(Bytes::from(encoded)).ok()
}

fn receipt_json(r: &SettleResponse) -> String {
    let mut out = String::with_capacity(
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
        field(&mut out, "errorReason", reason);
    }
    if let Some(payer) = &r.payer {
        field(&mut out, "payer", payer.as_str());
    }
    field(&mut out, "transaction", &r.transaction);
    field(&mut out, "network", &r.network);
    if let Some(credits) = &r.credits_redeemed {
        // Decimal digits only: nothing to escape.
        let _ = write!(out, ",\"creditsRedeemed\":\"{credits}\"");
    }
    if let Some(credits) = &r.remaining_balance {
        let _ = write!(out, ",\"remainingBalance\":\"{credits}\"");
    }
    if let Some(tx) = &r.order_tx {
        field(&mut out, "orderTx", tx);
    }
    out.push('}');
    out
}

/// `,"name":"value"` with `value` escaped as JSON requires.
fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":\"");
    if value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
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
        vec![full, refused]
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
