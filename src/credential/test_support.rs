//! Fixtures shared by the token unit tests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The exact docs/wire-notes.md §6.3 shape, as the backend mints it.
pub(crate) const FIXTURE_JSON: &str = r#"{
  "x402Version": 2,
  "accepted": {
    "scheme": "nvm:erc4337",
    "network": "eip155:84532",
    "planId": "105906633592154016712415751065660953070604027297000423385655551747721326921578",
    "extra": { "version": "1", "agentId": "4242" }
  },
  "payload": {
    "signature": "0x1b2c3d",
    "authorization": {
      "from": "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd",
      "sessionKeysProvider": "zerodev",
      "sessionKeys": []
    }
  },
  "extensions": {}
}"#;

/// PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A test signing key: seed `[seed_byte; 32]`.
pub(crate) struct TestKey {
    pub(crate) seed_byte: u8,
    /// base64url of the public key (the JWK `x`).
    pub(crate) x: &'static str,
}

/// Seed `[7; 32]`, the issuer's key in most tests.
pub(crate) const KEY_7: TestKey = TestKey {
    seed_byte: 7,
    x: "6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw",
};
/// Seed `[9; 32]`, another key.
pub(crate) const KEY_9: TestKey = TestKey {
    seed_byte: 9,
    x: "_RckOFqgx1tk-3jNYC-h2ZH96_drE8WO1wLqyDXp9hg",
};

impl TestKey {
    pub(crate) fn pkcs8(&self) -> Vec<u8> {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&[self.seed_byte; 32]);
        der
    }

    pub(crate) fn public_bytes(&self) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(self.x).unwrap()
    }

    /// Signs `claims` with EdDSA, with `kid` in the header when given.
    pub(crate) fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_ed_der(&self.pkcs8());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    pub(crate) fn jwk_json(&self, kid: &str) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": kid, "x": self.x})
    }
}

/// A JWKS as the devserver serves it.
pub(crate) fn jwks(keys: &[(&TestKey, &str)]) -> JwkSet {
    let keys: Vec<_> = keys.iter().map(|(k, kid)| k.jwk_json(kid)).collect();
    serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
}

/// Hand-builds a compact JWS from JSON parts and a raw signature segment.
pub(crate) fn compact(header: &serde_json::Value, claims: &serde_json::Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The hard-coded public keys are the ones ed25519-dalek derives from the seeds.
#[cfg(feature = "devserver")]
#[test]
fn test_keys_match_ed25519_dalek() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    for k in [KEY_7, KEY_9] {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[k.seed_byte; 32]);
        assert_eq!(sk.verifying_key().to_bytes().to_vec(), k.public_bytes());
        // Ed25519 is deterministic: dalek's PKCS#8 (v2) key signs exactly as ours does.
        let dalek_der = sk.to_pkcs8_der().unwrap();
        let claims = serde_json::json!({"sub": "0x1"});
        let header = Header::new(Algorithm::EdDSA);
        let theirs = EncodingKey::from_ed_der(dalek_der.as_bytes());
        let theirs = jsonwebtoken::encode(&header, &claims, &theirs).unwrap();
        assert_eq!(theirs, k.sign(None, &claims));
    }
}

/// PKCS#8 DER of a fixed P-256 key (scalar 0x1234…cdef), for ES256 tests.
const P256_PKCS8_HEX: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b02010104201234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdefa14403420004471c3e758c4904285bba7e53118ed0f524adeb0757d25bd2f8e7b0d76dfa714cdd520f7aca8a8b917acc37f51de8f0c9bbe3ad858382e702dc25a12d09f7a858";

/// The fixed P-256 signing key.
pub(crate) fn p256_key() -> EncodingKey {
    let der: Vec<u8> = (0..P256_PKCS8_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&P256_PKCS8_HEX[i..i + 2], 16).unwrap())
        .collect();
    EncodingKey::from_ec_der(&der)
}

/// The public JWK of [`p256_key`], with `kid`.
pub(crate) fn p256_jwk(kid: &str) -> jsonwebtoken::jwk::Jwk {
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&p256_key(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}
