//! Reading the account address out of an API key without verifying it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use super::Error;
use crate::types::Address;

#[derive(Deserialize)]
struct KeyClaims {
    sub: Option<String>,
}

/// The `sub` claim of `<prefix>:<JWT>` (or of a bare JWT), decoded without verifying
/// the signature, as both official SDKs do.
///
/// Real keys carry `{"alg":"ES256K"}`, an algorithm `jsonwebtoken` does not model, so
/// its header parser would refuse them; only the payload segment is read here.
pub(crate) fn account_address(api_key: &str) -> Result<Address, Error> {
    let jwt = api_key.split_once(':').map_or(api_key, |(_, jwt)| jwt);
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::InvalidApiKey(
            "expected `<prefix>:<JWT>` with a three-part JWT".to_owned(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Error::InvalidApiKey("the JWT payload is not base64url".to_owned()))?;
    let claims: KeyClaims = serde_json::from_slice(&bytes)
        .map_err(|_| Error::InvalidApiKey("the JWT payload is not a JSON object".to_owned()))?;
    let sub = claims
        .sub
        .ok_or_else(|| Error::InvalidApiKey("the JWT has no `sub` claim".to_owned()))?;
    sub.parse()
        .map_err(|_| Error::InvalidApiKey("the `sub` claim is not a 0x address".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn reads_sub_of_an_es256k_key() {
        let key = format!(
            "sandbox-staging:{}.{}.sig",
            b64(r#"{"alg":"ES256K"}"#),
            b64(
                r#"{"iss":"0x5838B5512cF9f12FE9f2beccB20eb47211F9B0bc","sub":"0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd","jti":"0x30","exp":1796933727,"o11y":"sk"}"#
            )
        );
        assert_eq!(
            account_address(&key).unwrap().as_str(),
            "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd"
        );
    }

    #[test]
    fn refuses_bad_keys_without_echoing_them() {
        for key in ["", "nope", "a:b.c", "a:b.c.d.e", "x:!!!.!!!.!!!"] {
            let err = account_address(key).unwrap_err().to_string();
            assert!(err.starts_with("invalid Nevermined API key"), "{err}");
        }
        let no_sub = format!("local:{}.{}.s", b64("{}"), b64(r#"{"iss":"x"}"#));
        let err = account_address(&no_sub).unwrap_err().to_string();
        assert!(err.contains("sub"), "{err}");
        assert!(!err.contains(&no_sub));
    }
}
