//! The server's Ed25519 key: dev-account API keys (`local:<JWT>`), legacy bearer
//! access tokens (docs/wire-notes.md §5.1, §7.4) and the JWKS that verifies them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hex::{hex, random_hex};
use crate::types::{AccessToken, AccessTokenClaims, Address, AgentId, ApiKey, PlanId};

/// The prefix of dev API keys: not one the SDKs map to a hosted environment, so they
/// use `NVM_BACKEND_URL` (docs/wire-notes.md §1.2).
pub(crate) const API_KEY_PREFIX: &str = "local";

/// How long issued API keys stay valid: ten years.
const API_KEY_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// Claims of a dev API key (the same set as real keys, docs/wire-notes.md §1.3).
#[derive(Debug, Serialize, Deserialize)]
struct ApiKeyClaims {
    iss: String,
    sub: Address,
    jti: String,
    exp: u64,
    o11y: String,
}

/// The signing key and what is derived from it.
pub(crate) struct ServerKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_x: String,
    kid: String,
    issuer: Address,
}

impl ServerKeys {
    /// A fresh random key.
    pub(crate) fn generate() -> Self {
        let signing = SigningKey::generate(&mut OsRng);
        // Encoding a freshly generated key to PKCS#8 cannot fail; the fallback keeps
        // this path panic-free anyway (signing would then fail loudly per token).
        let der = signing
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let public = signing.verifying_key().to_bytes();
        let digest = Sha256::digest(public);
        let kid = hex(&digest[..8]);
        let issuer = format!("0x{}", hex(&digest[12..32]))
            .parse()
            .unwrap_or_else(|_| Address::zero());
        ServerKeys {
            encoding: EncodingKey::from_ed_der(&der),
            decoding: DecodingKey::from_ed_der(&public),
            public_x: URL_SAFE_NO_PAD.encode(public),
            kid,
            issuer,
        }
    }

    /// The server's own address: the `iss` of everything it signs.
    pub(crate) fn issuer(&self) -> &Address {
        &self.issuer
    }

    fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header
    }

    /// A new API key for `address`, `local:<JWT>`.
    pub(crate) fn issue_api_key(&self, address: &Address, now: u64) -> ApiKey {
        let claims = ApiKeyClaims {
            iss: self.issuer.to_string(),
            sub: address.clone(),
            jti: format!("0x{}", random_hex(32)),
            exp: now.saturating_add(API_KEY_LIFETIME_SECS),
            o11y: format!("sk-local-{}", random_hex(12)),
        };
        let jwt = jsonwebtoken::encode(&self.header(), &claims, &self.encoding).unwrap_or_default();
        ApiKey::new(format!("{API_KEY_PREFIX}:{jwt}"))
    }

    /// The account of a key this server issued, from `Authorization: Bearer <key>`.
    /// `None` for any key it did not sign. Expiry is not checked: the server clock can
    /// be moved far ahead by tests, and dev keys are long-lived anyway.
    pub(crate) fn verify_api_key(&self, key: &str) -> Option<Address> {
        let jwt = key.split_once(':').map_or(key, |(_, jwt)| jwt).trim();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.required_spec_claims.insert("sub".to_owned());
        jsonwebtoken::decode::<ApiKeyClaims>(jwt, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims.sub)
    }

    /// A legacy bearer access token (EdDSA JWT with `kid`).
    pub(crate) fn issue_access_token(
        &self,
        subscriber: &Address,
        plan_id: &PlanId,
        agent_id: &AgentId,
        iat: u64,
        exp: u64,
    ) -> AccessToken {
        let claims = AccessTokenClaims {
            iss: self.issuer.to_string(),
            sub: subscriber.clone(),
            plan_id: plan_id.clone(),
            agent_id: Some(agent_id.clone()),
            exp,
            iat: Some(iat),
            jti: Some(format!("0x{}", random_hex(32))),
        };
        AccessToken::new(
            jsonwebtoken::encode(&self.header(), &claims, &self.encoding).unwrap_or_default(),
        )
    }

    /// The public key as a JWK set (`GET /.well-known/jwks.json`).
    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": self.public_x,
                "kid": self.kid,
                "alg": "EdDSA",
                "use": "sig",
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;

    fn addr(n: u8) -> Address {
        format!("0x{:040x}", n).parse().unwrap()
    }

    #[test]
    fn api_keys_round_trip_and_foreign_keys_fail() {
        let keys = ServerKeys::generate();
        let key = keys.issue_api_key(&addr(1), 1_000);
        assert!(key.expose().starts_with("local:"));
        assert_eq!(keys.verify_api_key(key.expose()), Some(addr(1)));
        let other = ServerKeys::generate();
        assert_eq!(other.verify_api_key(key.expose()), None);
        assert_eq!(keys.verify_api_key("local:a.b.c"), None);
        assert_eq!(keys.verify_api_key(""), None);
    }

    #[test]
    fn access_tokens_verify_with_the_jwks() {
        let keys = ServerKeys::generate();
        let token = keys.issue_access_token(
            &addr(2),
            &"7".parse().unwrap(),
            &"9".parse().unwrap(),
            100,
            u64::MAX / 2,
        );
        let set: JwkSet = serde_json::from_value(keys.jwks()).unwrap();
        let jwk = &set.keys[0];
        let header = jsonwebtoken::decode_header(token.expose()).unwrap();
        assert_eq!(header.kid.as_deref(), jwk.common.key_id.as_deref());
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let claims = jsonwebtoken::decode::<AccessTokenClaims>(
            token.expose(),
            &key,
            &Validation::new(Algorithm::EdDSA),
        )
        .unwrap()
        .claims;
        assert_eq!(claims.sub, addr(2));
        assert_eq!(claims.agent_id.unwrap().as_str(), "9");
    }
}
