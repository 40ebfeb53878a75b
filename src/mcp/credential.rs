//! Which credential pays for one MCP call, and the logical URL it pays for.
//!
//! The credential is read from the call itself, never from its session: the JSON-RPC
//! request's `_meta["x402/payment"]`, then the HTTP request that carried it
//! (`Authorization: Bearer`, then `payment-signature`). payments-py 1.18's server reads
//! the headers of the most recently created session, so one caller can be charged for
//! another's call (docs: mcp-spec §2); rmcp hands every request its own `_meta` and its
//! own `http::request::Parts`, so that cannot happen here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use rmcp::model::{Extensions, RequestMetaObject};

use crate::credential::{find_credential, TokenError};

/// The `_meta` key of the payment payload (x402 MCP transport).
pub(crate) const META_PAYMENT: &str = "x402/payment";
/// The largest `_meta` payment accepted, as JSON (the SDKs' limit).
const MAX_META_PAYMENT: usize = 65_536;
/// The header the gate reads the chosen credential from.
pub(crate) const PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");

/// The credential text of this call, or `None` when it carries none.
///
/// `_meta["x402/payment"]` must be the decoded payload object, as the SDKs' clients
/// send it; it is re-encoded the way they encode tokens (compact JSON, base64url
/// without padding). Any other value there is ignored, as the SDKs do.
///
/// # Errors
/// A header credential that is too large or not visible ASCII.
pub(crate) fn call_credential(
    meta: &RequestMetaObject,
    extensions: &Extensions,
) -> Result<Option<String>, TokenError> {
    if let Some(payload) = meta.get(META_PAYMENT).filter(|v| v.is_object()) {
        if let Ok(json) = serde_json::to_vec(payload) {
            if json.len() <= MAX_META_PAYMENT {
                return Ok(Some(URL_SAFE_NO_PAD.encode(json)));
            }
        }
    }
    let Some(parts) = extensions.get::<Parts>() else {
        return Ok(None);
    };
    Ok(find_credential(&parts.headers, &[AUTHORIZATION, PAYMENT_SIGNATURE])?.map(str::to_owned))
}

/// A request head holding only the credential, for the gate's steps (which read it
/// from `payment-signature`). `Err` when the text cannot be a header value.
pub(crate) fn credential_head(text: Option<&str>) -> Result<Parts, TokenError> {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::POST;
    if let Some(text) = text {
        let mut value = HeaderValue::from_str(text).map_err(|_| TokenError::NotUtf8)?;
        value.set_sensitive(true);
        parts.headers.insert(PAYMENT_SIGNATURE, value);
    }
    Ok(parts)
}

/// The logical URL of a paid item, built as payments-py builds it
/// (`mcp://{server}/tools/{name}`; prompts use the `tools` segment too, as there), but
/// without the arguments in a query: the backend compares origin and path only, and
/// arguments are the caller's data, not ours to send to the backend.
pub(crate) fn logical_url(server: &str, segment: &str, name: &str) -> String {
    format!("mcp://{server}/{segment}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(value: serde_json::Value) -> RequestMetaObject {
        let mut meta = RequestMetaObject::default();
        meta.insert(META_PAYMENT.to_owned(), value);
        meta
    }

    fn with_headers(pairs: &[(&'static str, &str)]) -> Extensions {
        let mut request = http::Request::new(());
        for (name, value) in pairs {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_str(value).unwrap());
        }
        let mut extensions = Extensions::new();
        extensions.insert(request.into_parts().0);
        extensions
    }

    #[test]
    fn meta_first_then_bearer_then_payment_signature() {
        let headers = with_headers(&[
            ("authorization", "Bearer bbb"),
            ("payment-signature", "ppp"),
        ]);
        let payload = json!({"x402Version": 2, "payload": {"signature": "0x1"}});
        let text = call_credential(&meta(payload.clone()), &headers)
            .unwrap()
            .unwrap();
        let decoded: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&text).unwrap()).unwrap();
        assert_eq!(decoded, payload);
        assert_eq!(
            call_credential(&RequestMetaObject::default(), &headers)
                .unwrap()
                .as_deref(),
            Some("bbb")
        );
        let only_signature = with_headers(&[("payment-signature", "ppp")]);
        assert_eq!(
            call_credential(&RequestMetaObject::default(), &only_signature)
                .unwrap()
                .as_deref(),
            Some("ppp")
        );
    }

    #[test]
    fn a_meta_payment_that_is_not_an_object_is_ignored() {
        let headers = with_headers(&[("authorization", "Bearer bbb")]);
        for value in [json!("eyJhIjoxfQ"), json!([1]), json!(null)] {
            assert_eq!(
                call_credential(&meta(value), &headers).unwrap().as_deref(),
                Some("bbb")
            );
        }
        let huge = json!({"pad": "a".repeat(MAX_META_PAYMENT)});
        assert_eq!(
            call_credential(&meta(huge), &headers).unwrap().as_deref(),
            Some("bbb")
        );
        assert_eq!(
            call_credential(&RequestMetaObject::default(), &Extensions::new()).unwrap(),
            None
        );
    }

    #[test]
    fn the_head_carries_the_credential_or_refuses_it() {
        let head = credential_head(Some("abc")).unwrap();
        assert_eq!(head.headers[PAYMENT_SIGNATURE], "abc");
        assert!(head.headers[PAYMENT_SIGNATURE].is_sensitive());
        assert!(credential_head(None).unwrap().headers.is_empty());
        assert!(credential_head(Some("a\nb")).is_err());
    }
}
