//! Legacy bearer access tokens (docs/wire-notes.md §7.4): compact JWS verified locally against
//! the issuer's JWKS (docs/architecture.md, step 2).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::error::{redact_literals, sanitized_name};
use super::{TokenError, MAX_CREDENTIAL_BYTES};
use crate::types::AccessTokenClaims;

/// Leeway for `exp` and `nbf`, in seconds, unless [`BearerVerifier::with_leeway`] says
/// otherwise.
const DEFAULT_LEEWAY_SECS: u64 = 5;

/// The JOSE header fields this crate reads. `alg` is a plain string so that algorithms
/// `jsonwebtoken` does not know (`ES256K`, `none`) are reported, not parse errors.
#[derive(Debug, Deserialize)]
pub(crate) struct JoseHeader {
    pub(crate) alg: String,
    #[serde(default)]
    pub(crate) kid: Option<String>,
}

/// Whether `s` has the shape of a compact JWS: three `.`-separated base64url segments,
/// the first two non-empty (the third is empty for `alg: none`, which is still a JWT,
/// to be refused by the verifier).
pub(crate) fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |seg: &str| {
        seg.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !h.is_empty() && !p.is_empty() && b64url(h) && b64url(p) && b64url(sig)
}

/// Decodes the JOSE header of a compact JWS without verifying anything.
pub(crate) fn decode_jose_header(token: &str) -> Result<JoseHeader, TokenError> {
    let segment = token.split('.').next().ok_or(TokenError::NotAJwt)?;
    let json = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Base64)?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&json))
        .map_err(TokenError::json)
}

/// One trusted key: its id, the only algorithm it may verify, the key.
#[derive(Clone)]
struct TrustedKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies legacy bearer access tokens locally (docs/architecture.md, step 2).
///
/// Only EdDSA (Ed25519) and ES256 (P-256) are accepted, and a token's `alg` must be the
/// algorithm of the key that verifies it: `alg: none`, HMAC, RSA and any algorithm
/// confusion are refused. The key is chosen by the token's `kid`; a token without a
/// `kid` is accepted only when the set holds exactly one key. Required claims: `sub` (an
/// address), `planId`, `exp`; `nbf` is honoured when present. A JWT the issuer signed
/// for another purpose (an API key: no `planId`) is refused with
/// [`TokenError::Claims`]. Cloning is cheap (the keys are shared).
///
/// ```
/// use jsonwebtoken::jwk::JwkSet;
/// use nvm_payments::credential::{BearerVerifier, TokenError};
///
/// let jwks: JwkSet = serde_json::from_str(r#"{"keys":[{"kty":"OKP","crv":"Ed25519",
///     "kid":"dev-1","alg":"EdDSA","x":"6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw"}]}"#).unwrap();
/// let verifier = BearerVerifier::from_jwks(&jwks)?.with_leeway(10);
/// assert!(format!("{verifier:?}").contains("dev-1"));
/// assert_eq!(verifier.verify("not.a.jwt").unwrap_err().is_malformed(), true);
/// # Ok::<(), TokenError>(())
/// ```
#[derive(Clone)]
pub struct BearerVerifier {
    keys: Arc<[TrustedKey]>,
    issuer: Option<Arc<str>>,
    leeway: u64,
}

impl fmt::Debug for BearerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("<no kid>"))
            .collect();
        f.debug_struct("BearerVerifier")
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl BearerVerifier {
    /// Keeps the usable keys of `jwks`: Ed25519 `OKP` keys (EdDSA) and P-256 `EC` keys
    /// (ES256) whose `alg`, when given, agrees, and whose material is a valid public key.
    /// Every other key is ignored.
    ///
    /// # Errors
    /// [`TokenError::NoKeys`] when no key is usable.
    pub fn from_jwks(jwks: &JwkSet) -> Result<Self, TokenError> {
        let keys: Vec<TrustedKey> = jwks.keys.iter().filter_map(trusted_key).collect();
        if keys.is_empty() {
            return Err(TokenError::NoKeys);
        }
        Ok(BearerVerifier {
            keys: keys.into(),
            issuer: None,
            leeway: DEFAULT_LEEWAY_SECS,
        })
    }

    /// Also requires the `iss` claim to equal `iss`.
    #[must_use]
    pub fn with_issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuer = Some(Arc::from(iss.into()));
        self
    }

    /// Clock leeway for `exp` and `nbf`, in seconds (default 5): a token is expired from
    /// `exp + leeway` on, and valid from `nbf - leeway` on.
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    /// Verifies `token` at the current system time. See [`verify_at`](Self::verify_at).
    pub fn verify(&self, token: &str) -> Result<AccessTokenClaims, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
    }

    /// Verifies `token` as of `now_unix` (seconds since the epoch) and returns its claims.
    ///
    /// # Errors
    /// [`TokenError::TooLarge`], [`TokenError::NotAJwt`], [`TokenError::Base64`] or
    /// [`TokenError::Json`] for an undecodable token; [`TokenError::UnsupportedAlgorithm`],
    /// [`TokenError::UnknownKey`], [`TokenError::BadSignature`], [`TokenError::Expired`],
    /// [`TokenError::NotYetValid`] or [`TokenError::Claims`] for a readable but
    /// unacceptable one.
    pub fn verify_at(&self, token: &str, now_unix: u64) -> Result<AccessTokenClaims, TokenError> {
        if token.len() > MAX_CREDENTIAL_BYTES {
            return Err(TokenError::TooLarge {
                len: token.len(),
                max: MAX_CREDENTIAL_BYTES,
            });
        }
        let token = token.trim();
        if token.split('.').count() != 3 {
            return Err(TokenError::NotAJwt);
        }
        let header = decode_jose_header(token)?;
        let alg = allowed_algorithm(&header.alg)?;
        let key = self.select_key(header.kid.as_deref())?;
        if key.alg != alg {
            return Err(TokenError::UnsupportedAlgorithm(sanitized_name(
                &header.alg,
            )));
        }
        let raw = verify_signature(token, key)?;
        self.check_claims(&raw, now_unix)
    }

    fn select_key(&self, kid: Option<&str>) -> Result<&TrustedKey, TokenError> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(TokenError::UnknownKey)
    }

    fn check_claims(
        &self,
        raw: &serde_json::Value,
        now: u64,
    ) -> Result<AccessTokenClaims, TokenError> {
        let claims: AccessTokenClaims = serde_path_to_error::deserialize(raw).map_err(|e| {
            TokenError::Claims(redact_literals(&format!("{}: {}", e.path(), e.inner())))
        })?;
        if claims.exp.saturating_add(self.leeway) <= now {
            return Err(TokenError::Expired);
        }
        match raw.get("nbf") {
            None | Some(serde_json::Value::Null) => {}
            Some(nbf) => {
                let nbf = nbf
                    .as_u64()
                    .ok_or_else(|| TokenError::Claims("`nbf` is not a timestamp".into()))?;
                if nbf > now.saturating_add(self.leeway) {
                    return Err(TokenError::NotYetValid);
                }
            }
        }
        if let Some(iss) = &self.issuer {
            if claims.iss != **iss {
                return Err(TokenError::Claims("unexpected issuer".into()));
            }
        }
        Ok(claims)
    }
}

/// The allow-list. Everything else, `none` included, is refused by name.
fn allowed_algorithm(alg: &str) -> Result<Algorithm, TokenError> {
    match alg {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(TokenError::UnsupportedAlgorithm(sanitized_name(other))),
    }
}

/// Checks the signature with `jsonwebtoken` (restricted to the key's one algorithm) and
/// returns the raw claims. Time and claim checks are done by the caller against an
/// explicit clock, so `jsonwebtoken`'s own are switched off.
fn verify_signature(token: &str, key: &TrustedKey) -> Result<serde_json::Value, TokenError> {
    let mut validation = Validation::new(key.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(map_jwt_error)
}

fn map_jwt_error(err: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::Base64(_) => TokenError::Base64,
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => TokenError::Json {
            path: ".".into(),
            message: "JWT part is not a JSON object".into(),
        },
        ErrorKind::InvalidToken => TokenError::NotAJwt,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm("?".into())
        }
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        // Key-format errors cannot happen for keys `trusted_key` accepted; refusing the
        // token is the safe answer if one ever does.
        _ => TokenError::BadSignature,
    }
}

/// A JWK this crate can verify with, or `None`.
fn trusted_key(jwk: &Jwk) -> Option<TrustedKey> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p)
            if p.curve == EllipticCurve::Ed25519 && decoded_len(&p.x) == Some(32) =>
        {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p)
            if p.curve == EllipticCurve::P256
                && decoded_len(&p.x) == Some(32)
                && decoded_len(&p.y) == Some(32) =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    if !declared_ok {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    // Building a verifier validates the point (on the curve, not small-order garbage);
    // a dummy signature then simply fails to verify.
    let probe = URL_SAFE_NO_PAD.encode([0u8; 64]);
    jsonwebtoken::crypto::verify(&probe, b"probe", &key, alg).ok()?;
    Some(TrustedKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

fn decoded_len(b64url: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(b64url).ok().map(|v| v.len())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;
    use crate::credential::test_support::{compact, jwks, p256_jwk, p256_key, KEY_7, KEY_9};

    const NOW: u64 = 1_800_000_000;
    const SUB: &str = "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd";

    fn claims() -> Value {
        json!({"iss": "0xissuer", "sub": SUB, "planId": "42", "agentId": "7",
               "exp": NOW + 600, "iat": NOW - 1, "jti": "j1"})
    }

    fn verifier() -> BearerVerifier {
        BearerVerifier::from_jwks(&jwks(&[(&KEY_7, "k7")])).unwrap()
    }

    fn with(mut base: Value, key: &str, v: Value) -> Value {
        base[key] = v;
        base
    }

    fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn valid_token_passes_and_yields_its_claims() {
        let token = KEY_7.sign(Some("k7"), &claims());
        let c = verifier().verify_at(&token, NOW).unwrap();
        assert_eq!(c.sub.as_str(), SUB);
        assert_eq!(c.plan_id.as_str(), "42");
        assert_eq!(c.agent_id.map(|a| a.to_string()).as_deref(), Some("7"));
        assert_eq!(c.exp, NOW + 600);
        assert_eq!(c.iss, "0xissuer");
        // And at the real clock, for a token that is valid now.
        let fresh = with(claims(), "exp", json!(u64::MAX / 2));
        assert!(verifier().verify(&KEY_7.sign(Some("k7"), &fresh)).is_ok());
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let token = KEY_7.sign(Some("k7"), &claims());
        let exp = NOW + 600;
        assert!(verifier().verify_at(&token, exp + 4).is_ok());
        assert_eq!(
            verifier().verify_at(&token, exp + 5),
            Err(TokenError::Expired)
        );
        let strict = verifier().with_leeway(0);
        assert_eq!(strict.verify_at(&token, exp), Err(TokenError::Expired));
        assert!(strict.verify_at(&token, exp - 1).is_ok());
        assert!(verifier()
            .with_leeway(3600)
            .verify_at(&token, exp + 3000)
            .is_ok());
    }

    #[test]
    fn not_yet_valid() {
        let token = KEY_7.sign(Some("k7"), &with(claims(), "nbf", json!(NOW + 100)));
        assert_eq!(
            verifier().verify_at(&token, NOW),
            Err(TokenError::NotYetValid)
        );
        assert!(verifier().verify_at(&token, NOW + 96).is_ok());
        let bad_nbf = KEY_7.sign(Some("k7"), &with(claims(), "nbf", json!("soon")));
        assert!(matches!(
            verifier().verify_at(&bad_nbf, NOW),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn key_selection_by_kid() {
        let two = BearerVerifier::from_jwks(&jwks(&[(&KEY_7, "k7"), (&KEY_9, "k9")])).unwrap();
        assert!(two
            .verify_at(&KEY_9.sign(Some("k9"), &claims()), NOW)
            .is_ok());
        assert_eq!(
            two.verify_at(&KEY_7.sign(Some("nope"), &claims()), NOW),
            Err(TokenError::UnknownKey)
        );
        // No kid: fine with one key, ambiguous with two.
        assert!(verifier()
            .verify_at(&KEY_7.sign(None, &claims()), NOW)
            .is_ok());
        assert_eq!(
            two.verify_at(&KEY_7.sign(None, &claims()), NOW),
            Err(TokenError::UnknownKey)
        );
        // Signed by k7 but claiming to be k9.
        assert_eq!(
            two.verify_at(&KEY_7.sign(Some("k9"), &claims()), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn edited_payload_fails_the_signature() {
        let token = KEY_7.sign(Some("k7"), &claims());
        let s = segments(&token);
        let forged = with(claims(), "planId", json!("43"));
        let edited = format!(
            "{}.{}.{}",
            s[0],
            URL_SAFE_NO_PAD.encode(forged.to_string()),
            s[2]
        );
        assert_eq!(
            verifier().verify_at(&edited, NOW),
            Err(TokenError::BadSignature)
        );
        let later = with(claims(), "exp", json!(NOW + 99_999));
        let extended = format!(
            "{}.{}.{}",
            s[0],
            URL_SAFE_NO_PAD.encode(later.to_string()),
            s[2]
        );
        assert_eq!(
            verifier().verify_at(&extended, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        for alg in ["none", "None", "NONE"] {
            let token = compact(&json!({"alg": alg, "kid": "k7"}), &claims(), "");
            assert_eq!(
                verifier().verify_at(&token, NOW),
                Err(TokenError::UnsupportedAlgorithm(alg.into()))
            );
        }
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k7".into());
        let key = EncodingKey::from_secret(&KEY_7.public_bytes());
        let token = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
        assert_eq!(
            verifier().verify_at(&token, NOW),
            Err(TokenError::UnsupportedAlgorithm("HS256".into()))
        );
        // The x of the JWK as a secret, too.
        let key = EncodingKey::from_secret(KEY_7.x.as_bytes());
        let token = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
        assert!(verifier().verify_at(&token, NOW).is_err());
    }

    #[test]
    fn unknown_and_other_algorithms_are_refused_by_name() {
        let sig = URL_SAFE_NO_PAD.encode([1u8; 64]);
        for alg in ["ES256K", "RS256", "PS256", "HS512", "ES384", "eddsa", ""] {
            let token = compact(&json!({"alg": alg, "kid": "k7"}), &claims(), &sig);
            assert_eq!(
                verifier().verify_at(&token, NOW),
                Err(TokenError::UnsupportedAlgorithm(alg.into())),
                "{alg}"
            );
        }
        let token = compact(&json!({"alg": 256}), &claims(), &sig);
        assert!(matches!(
            verifier().verify_at(&token, NOW),
            Err(TokenError::Json { .. })
        ));
    }

    #[test]
    fn es256_keys_work_and_cannot_be_confused_with_eddsa() {
        let set = JwkSet {
            keys: vec![p256_jwk("p1"), jwks(&[(&KEY_7, "k7")]).keys.remove(0)],
        };
        let v = BearerVerifier::from_jwks(&set).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("p1".into());
        let es = jsonwebtoken::encode(&header, &claims(), &p256_key()).unwrap();
        assert_eq!(v.verify_at(&es, NOW).unwrap().plan_id.as_str(), "42");
        // An ES256 header pointing at the EdDSA key, and the reverse.
        header.kid = Some("k7".into());
        let es_on_ed = jsonwebtoken::encode(&header, &claims(), &p256_key()).unwrap();
        assert_eq!(
            v.verify_at(&es_on_ed, NOW),
            Err(TokenError::UnsupportedAlgorithm("ES256".into()))
        );
        let ed_on_es = KEY_7.sign(Some("p1"), &claims());
        assert_eq!(
            v.verify_at(&ed_on_es, NOW),
            Err(TokenError::UnsupportedAlgorithm("EdDSA".into()))
        );
    }

    #[test]
    fn required_claims() {
        for missing in ["sub", "planId", "exp"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(missing);
            let token = KEY_7.sign(Some("k7"), &c);
            match verifier().verify_at(&token, NOW) {
                Err(TokenError::Claims(m)) => assert!(m.contains(missing), "{m}"),
                other => panic!("{missing}: {other:?}"),
            }
        }
        let not_an_address = KEY_7.sign(Some("k7"), &with(claims(), "sub", json!("alice")));
        assert!(matches!(
            verifier().verify_at(&not_an_address, NOW),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn issuer_check() {
        let token = KEY_7.sign(Some("k7"), &claims());
        assert!(verifier()
            .with_issuer("0xissuer")
            .verify_at(&token, NOW)
            .is_ok());
        assert!(matches!(
            verifier().with_issuer("0xother").verify_at(&token, NOW),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn garbage_and_truncated_tokens() {
        let v = verifier();
        let token = KEY_7.sign(Some("k7"), &claims());
        assert_eq!(v.verify_at("", NOW), Err(TokenError::NotAJwt));
        assert_eq!(v.verify_at("garbage", NOW), Err(TokenError::NotAJwt));
        assert_eq!(v.verify_at("a.b.c.d", NOW), Err(TokenError::NotAJwt));
        assert_eq!(v.verify_at("%%.e30.c2ln", NOW), Err(TokenError::Base64));
        assert!(v.verify_at("e30.e30.c2ln", NOW).unwrap_err().is_malformed());
        // Cut 10 characters off the signature: still base64, now the wrong length.
        assert_eq!(
            v.verify_at(&token[..token.len() - 10], NOW),
            Err(TokenError::BadSignature)
        );
        // Cut into the payload.
        let cut = &token[..token.find('.').unwrap() + 5];
        assert_eq!(v.verify_at(cut, NOW), Err(TokenError::NotAJwt));
        let big = format!("{}.{}.x", "a".repeat(MAX_CREDENTIAL_BYTES), "b");
        assert!(matches!(
            v.verify_at(&big, NOW),
            Err(TokenError::TooLarge { .. })
        ));
    }

    #[test]
    fn from_jwks_keeps_only_usable_keys() {
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "short"},
            {"kty": "OKP", "crv": "Ed25519", "x": KEY_9.x, "kid": "lies", "alg": "ES256"},
            {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": "p384"},
        ]}))
        .unwrap();
        assert_eq!(
            BearerVerifier::from_jwks(&set).unwrap_err(),
            TokenError::NoKeys
        );
        assert_eq!(
            BearerVerifier::from_jwks(&JwkSet { keys: vec![] }).unwrap_err(),
            TokenError::NoKeys
        );
        let mut set = set;
        set.keys.extend(jwks(&[(&KEY_7, "k7")]).keys);
        let v = BearerVerifier::from_jwks(&set).unwrap();
        assert_eq!(
            format!("{v:?}"),
            r#"BearerVerifier { kids: ["k7"], issuer: None, leeway: 5 }"#
        );
        let hmac = compact(&json!({"alg": "HS256", "kid": "hmac"}), &claims(), "c2ln");
        assert_eq!(
            v.verify_at(&hmac, NOW),
            Err(TokenError::UnsupportedAlgorithm("HS256".into()))
        );
    }

    #[test]
    fn errors_never_echo_the_token() {
        let v = verifier();
        let good = KEY_7.sign(Some("k7"), &claims());
        let s = segments(&good);
        let mut probes = vec![
            good[..good.len() - 10].to_owned(),
            compact(&json!({"alg": s[2].clone()}), &claims(), &s[2]),
            compact(
                &json!({"alg": "EdDSA", "kid": s[2].clone()}),
                &claims(),
                &s[2],
            ),
            KEY_7.sign(Some("k7"), &with(claims(), "sub", json!(s[2].clone()))),
            KEY_7.sign(Some("k7"), &with(claims(), "exp", json!(s[2].clone()))),
        ];
        probes.push(format!("{}.{}.{}", s[2], s[1], s[2]));
        for p in probes {
            let e = v.verify_at(&p, NOW).unwrap_err();
            let shown = format!("{e} {e:?}");
            for secret in [p.as_str(), s[1].as_str(), s[2].as_str()] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }
}
