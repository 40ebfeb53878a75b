//! x402 access tokens the devserver mints (docs/wire-notes.md §6.3): standard base64 of the
//! compact JSON envelope, signed with a per-server HMAC so that edited or foreign
//! tokens are refused (`BCK.X402.0005`).

use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::hex::{hex, unhex};
use crate::types::{
    AccessToken, Address, PaymentResource, PaymentScheme, SchemeExtra, TokenAuthorization,
    TokenPayload, X402TokenPayload, NETWORK_BASE_SEPOLIA, SCHEME_ERC4337, X402_VERSION,
};

/// Tokens longer than this are refused before decoding.
const MAX_TOKEN_LEN: usize = 16 * 1024;

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Why a token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenDecodeError {
    #[error("the x402 access token is too long")]
    TooLong,
    #[error("the x402 access token is not base64")]
    NotBase64,
    #[error("the x402 access token is not an x402 payment payload: {0}")]
    NotAPayload(String),
}

/// Which token to mint (wire-spec §6.2, `tokenVersion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenVersion {
    /// Reusable; the backend's default.
    V2,
    /// Single-use: a fresh `payload.authorization.nonce` (32 random bytes, hex), the
    /// requested verb in `accepted.extra.httpVerb`, and the resource it is bound to.
    V3 { resource_url: Option<String> },
}

/// Signs and checks tokens with the server's secret.
pub(crate) struct X402Signer {
    secret: [u8; 32],
}

impl X402Signer {
    pub(crate) fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        X402Signer { secret }
    }

    fn mac(
        &self,
        accepted: &PaymentScheme,
        authorization: &TokenAuthorization,
        resource: Option<&PaymentResource>,
    ) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes a key of any length");
        mac.update(&canonical(accepted, authorization, resource));
        mac
    }

    /// Mints a token for `from` paying with `requested` (scheme, network, plan, agent).
    pub(crate) fn mint(
        &self,
        requested: &PaymentScheme,
        from: &Address,
        version: TokenVersion,
    ) -> AccessToken {
        let agent_id = requested.agent_id().cloned();
        let (nonce, http_verb, resource) = match version {
            TokenVersion::V2 => (None, None, None),
            TokenVersion::V3 { resource_url } => {
                let mut bytes = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let verb = requested
                    .extra
                    .as_ref()
                    .and_then(|e| e.http_verb.as_deref())
                    .map(str::to_ascii_uppercase);
                let resource = resource_url.map(|url| PaymentResource {
                    url,
                    ..Default::default()
                });
                (Some(hex(&bytes)), verb, resource)
            }
        };
        let accepted = PaymentScheme {
            scheme: non_empty(&requested.scheme, SCHEME_ERC4337),
            network: non_empty(&requested.network, NETWORK_BASE_SEPOLIA),
            plan_id: requested.plan_id.clone(),
            extra: Some(SchemeExtra {
                version: Some("1".to_owned()),
                agent_id,
                http_verb,
            }),
        };
        let authorization = TokenAuthorization {
            from: from.clone(),
            session_keys_provider: Some("zerodev".to_owned()),
            session_keys: vec![],
            nonce,
        };
        let signature = format!(
            "0x{}",
            hex(&self
                .mac(&accepted, &authorization, resource.as_ref())
                .finalize()
                .into_bytes())
        );
        let token = X402TokenPayload {
            x402_version: X402_VERSION,
            accepted,
            payload: TokenPayload {
                signature,
                authorization,
            },
            extensions: Default::default(),
            resource,
        };
        let json = serde_json::to_vec(&token).unwrap_or_default();
        AccessToken::new(STANDARD.encode(json))
    }

    /// Whether the token's signature is this server's over its `accepted` and
    /// `payload.authorization` (constant-time comparison).
    pub(crate) fn is_authentic(&self, token: &X402TokenPayload) -> bool {
        let Some(sig) = token.payload.signature.strip_prefix("0x") else {
            return false;
        };
        let Some(bytes) = unhex(sig) else {
            return false;
        };
        self.mac(
            &token.accepted,
            &token.payload.authorization,
            token.resource.as_ref(),
        )
        .verify_slice(&bytes)
        .is_ok()
    }
}

/// Decodes a token: URL-safe or standard base64, padding optional, then the JSON.
pub(crate) fn decode(token: &str) -> Result<X402TokenPayload, TokenDecodeError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenDecodeError::TooLong);
    }
    let bytes = URL_SAFE_LENIENT
        .decode(token)
        .or_else(|_| STANDARD_LENIENT.decode(token))
        .map_err(|_| TokenDecodeError::NotBase64)?;
    serde_json::from_slice(&bytes).map_err(|e| TokenDecodeError::NotAPayload(e.to_string()))
}

/// The signed bytes: compact JSON of `[accepted, authorization]` with sorted keys, read
/// through the typed structs so that `null` and absent fields sign alike.
fn canonical(
    accepted: &PaymentScheme,
    authorization: &TokenAuthorization,
    resource: Option<&PaymentResource>,
) -> Vec<u8> {
    let value = serde_json::json!([accepted, authorization, resource]);
    serde_json::to_vec(&value).unwrap_or_default()
}

fn non_empty(value: &str, default: &str) -> String {
    if value.trim().is_empty() {
        default.to_owned()
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn scheme(agent: Option<&str>) -> PaymentScheme {
        PaymentScheme {
            scheme: String::new(),
            network: String::new(),
            plan_id: "42".parse().unwrap(),
            extra: Some(SchemeExtra {
                agent_id: agent.map(|a| a.parse().unwrap()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn minted_tokens_have_the_official_shape() {
        let signer = X402Signer::generate();
        let from: Address = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let token = signer.mint(&scheme(Some("7")), &from, TokenVersion::V2);
        let json: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(token.expose()).unwrap()).unwrap();
        assert_eq!(json["x402Version"], 2);
        assert_eq!(json["accepted"]["scheme"], "nvm:erc4337");
        assert_eq!(json["accepted"]["network"], "eip155:84532");
        assert_eq!(json["accepted"]["extra"]["version"], "1");
        assert_eq!(json["accepted"]["extra"]["agentId"], "7");
        assert_eq!(
            json["payload"]["authorization"]["sessionKeysProvider"],
            "zerodev"
        );
        assert_eq!(
            json["payload"]["authorization"]["sessionKeys"],
            serde_json::json!([])
        );
        assert_eq!(json["extensions"], serde_json::json!({}));
        assert!(json["payload"]["signature"]
            .as_str()
            .unwrap()
            .starts_with("0x"));
        let decoded = decode(token.expose()).unwrap();
        assert!(signer.is_authentic(&decoded));
    }

    #[test]
    fn any_edit_breaks_the_signature() {
        let signer = X402Signer::generate();
        let from: Address = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let token = decode(
            signer
                .mint(&scheme(Some("7")), &from, TokenVersion::V2)
                .expose(),
        )
        .unwrap();
        let mut edited = token.clone();
        edited.accepted.extra = Some(SchemeExtra {
            version: Some("1".into()),
            agent_id: Some("8".parse().unwrap()),
            http_verb: None,
        });
        assert!(!signer.is_authentic(&edited));
        let mut edited = token.clone();
        edited.payload.authorization.from = "0x00000000000000000000000000000000000000bb"
            .parse()
            .unwrap();
        assert!(!signer.is_authentic(&edited));
        let mut edited = token.clone();
        edited.accepted.plan_id = "43".parse().unwrap();
        assert!(!signer.is_authentic(&edited));
        assert!(!X402Signer::generate().is_authentic(&token));
    }

    #[test]
    fn decodes_url_safe_unpadded_and_refuses_garbage() {
        let signer = X402Signer::generate();
        let from: Address = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let token = signer.mint(&scheme(None), &from, TokenVersion::V2);
        let raw = STANDARD.decode(token.expose()).unwrap();
        let url = URL_SAFE_NO_PAD.encode(&raw);
        assert!(signer.is_authentic(&decode(&url).unwrap()));
        assert_eq!(decode("%%%"), Err(TokenDecodeError::NotBase64));
        assert!(matches!(
            decode("e30"),
            Err(TokenDecodeError::NotAPayload(_))
        ));
        assert_eq!(decode(&"A".repeat(20_000)), Err(TokenDecodeError::TooLong));
    }
}
