//! TEMPORARY stand-in for `crate::token` (being built on the `token` branch), with the
//! exact API agreed with the token engineer. Deleted when that branch is merged.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::types::{AccessToken, AccessTokenClaims, TokenDigest, X402TokenPayload};

pub(crate) const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct TokenError {
    malformed: bool,
}

impl TokenError {
    pub(crate) fn is_malformed(&self) -> bool {
        self.malformed
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Credential {
    X402 {
        token: AccessToken,
        payload: Box<X402TokenPayload>,
    },
    Bearer {
        token: AccessToken,
    },
}

impl Credential {
    pub(crate) fn token(&self) -> &AccessToken {
        match self {
            Credential::X402 { token, .. } | Credential::Bearer { token } => token,
        }
    }
    #[allow(dead_code)]
    pub(crate) fn digest(&self) -> TokenDigest {
        self.token().digest()
    }
}

pub(crate) fn default_token_headers() -> Vec<HeaderName> {
    vec![
        HeaderName::from_static("payment-signature"),
        http::header::AUTHORIZATION,
    ]
}

pub(crate) fn decode_x402_token(raw: &str) -> Result<X402TokenPayload, TokenError> {
    let malformed = TokenError { malformed: true };
    let trimmed = raw.trim().trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD.decode(raw.trim()))
        .map_err(|_| malformed.clone())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed)
}

pub(crate) fn extract_credential(
    headers: &HeaderMap,
    names: &[HeaderName],
) -> Result<Option<Credential>, TokenError> {
    let malformed = TokenError { malformed: true };
    for name in names {
        let Some(value) = headers.get(name) else {
            continue;
        };
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(malformed);
        }
        let text = value.to_str().map_err(|_| malformed.clone())?.trim();
        if text.is_empty() {
            continue;
        }
        if name == http::header::AUTHORIZATION {
            let Some((scheme, rest)) = text.split_once(' ') else {
                continue;
            };
            if !scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            let jwt = rest.trim();
            if jwt.split('.').count() != 3 {
                return Err(malformed);
            }
            return Ok(Some(Credential::Bearer {
                token: AccessToken::new(jwt),
            }));
        }
        let payload = decode_x402_token(text)?;
        return Ok(Some(Credential::X402 {
            token: AccessToken::new(text),
            payload: Box::new(payload),
        }));
    }
    Ok(None)
}

pub(crate) struct BearerVerifier {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl BearerVerifier {
    pub(crate) fn from_jwks(jwks: &JwkSet) -> Result<Self, TokenError> {
        let mut keys = Vec::new();
        for jwk in &jwks.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        Ok(BearerVerifier { keys })
    }

    pub(crate) fn verify(&self, jwt: &str) -> Result<AccessTokenClaims, TokenError> {
        let header =
            jsonwebtoken::decode_header(jwt).map_err(|_| TokenError { malformed: true })?;
        for (kid, alg, key) in &self.keys {
            if *alg != header.alg || (header.kid.is_some() && kid != &header.kid) {
                continue;
            }
            let mut validation = Validation::new(*alg);
            validation.validate_aud = false;
            validation.leeway = 0;
            if let Ok(data) = jsonwebtoken::decode::<AccessTokenClaims>(jwt, key, &validation) {
                return Ok(data.claims);
            }
        }
        Err(TokenError { malformed: false })
    }
}
