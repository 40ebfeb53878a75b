//! Finding the caller's credential in request headers (docs/architecture.md, step 1).

use std::fmt;
use std::hash::Hasher;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::jwt::{decode_jose_header, looks_like_jwt};
use super::{decode_x402_token, TokenError, MAX_CREDENTIAL_BYTES};
use crate::types::{AccessToken, TokenDigest, X402TokenPayload};

/// The x402 v2 HTTP transport header carrying the access token (docs/wire-notes.md §9.3).
const PAYMENT_SIGNATURE: &str = "payment-signature";

/// A credential found in a request, decoded but not yet authenticated.
///
/// `Debug` shows a digest of the token, never the token (nor the envelope's signature).
// One credential per request, moved once into the request's future: the size of the
// x402 variant costs nothing that a `Box` would save, and the layer matches on the
// payload directly.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// An x402 v2 access token (docs/wire-notes.md §6.3), to be verified by the facilitator.
    X402 {
        /// The token as received (trimmed).
        token: AccessToken,
        /// Its decoded envelope.
        payload: X402TokenPayload,
    },
    /// A legacy bearer JWT (docs/wire-notes.md §7.4), to be verified with a
    /// [`BearerVerifier`](super::BearerVerifier).
    Bearer {
        /// The JWT as received.
        token: AccessToken,
    },
}

impl Credential {
    /// The raw token.
    pub fn token(&self) -> &AccessToken {
        match self {
            Credential::X402 { token, .. } | Credential::Bearer { token } => token,
        }
    }

    /// A digest of the token, the same for every base64 spelling of it
    /// ([`canonical_digest`]): the cache key and the thing to log.
    pub fn digest(&self) -> TokenDigest {
        canonical_digest(self.token().expose())
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::X402 { token, payload } => f
                .debug_struct("X402")
                .field("token", token)
                .field("scheme", &payload.accepted.scheme)
                .field("plan_id", &payload.accepted.plan_id)
                .field("agent_id", &payload.accepted.agent_id())
                .field("payer", &payload.payload.authorization.from)
                .finish_non_exhaustive(),
            Credential::Bearer { token } => f.debug_struct("Bearer").field("token", token).finish(),
        }
    }
}

/// The headers [`extract_credential`] looks at by default, in order:
/// `payment-signature` (x402 v2), then `authorization` (legacy bearer).
pub fn default_token_headers() -> Vec<HeaderName> {
    vec![HeaderName::from_static(PAYMENT_SIGNATURE), AUTHORIZATION]
}

/// Look at `header_names` in order; the first present and non-empty header wins.
///
/// `authorization` values must be `Bearer <v>` (scheme case-insensitive; other schemes
/// are skipped as absent). The value is classified by shape: three `.`-separated
/// base64url segments → Bearer JWT (not verified here, only that it has a decodable
/// header); anything else → x402 envelope, decoded with
/// [`decode_x402_token`]. `Ok(None)` when no header carries a credential.
///
/// # Errors
/// A present credential that cannot be decoded: [`TokenError::TooLarge`] (checked before
/// anything else), [`TokenError::NotUtf8`], and the errors of [`decode_x402_token`] or of
/// decoding the JWT header.
pub fn extract_credential(
    headers: &HeaderMap,
    header_names: &[HeaderName],
) -> Result<Option<Credential>, TokenError> {
    match find_credential(headers, header_names)? {
        Some(raw) => classify(raw).map(Some),
        None => Ok(None),
    }
}

/// The credential text [`extract_credential`] would decode, found without decoding it:
/// the first of `header_names` that carries one (`authorization` only as
/// `Bearer <v>`), trimmed. The one header scanner: the layer's hot path keys its
/// caches with this text and decodes it only on a cache miss.
///
/// # Errors
/// [`TokenError::TooLarge`] (checked first) and [`TokenError::NotUtf8`].
pub fn find_credential<'h>(
    headers: &'h HeaderMap,
    header_names: &[HeaderName],
) -> Result<Option<&'h str>, TokenError> {
    for name in header_names {
        let Some(value) = headers.get(name) else {
            continue;
        };
        if let Some(raw) = header_text(name, value)? {
            return Ok(Some(raw));
        }
    }
    Ok(None)
}

/// A digest of what a credential *is*, not of how it was spelled: base64 padding is
/// dropped and the standard alphabet's `+` `/` read as the URL-safe `-` `_`, since the
/// decoders accept every one of these spellings for one token. The key of the layer's
/// verification caches and the form logged; never the token itself.
///
/// ```
/// use nvm_payments::credential::canonical_digest;
/// assert_eq!(canonical_digest("ab+/cd=="), canonical_digest("ab-_cd"));
/// assert_ne!(canonical_digest("ab+/cd"), canonical_digest("ab+/ce"));
/// ```
pub fn canonical_digest(credential: &str) -> TokenDigest {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for_canonical_chunks(credential, |chunk| hasher.update(chunk));
    TokenDigest::from_bytes(hasher.finalize().into())
}

/// Feeds the canonical text of a credential (see [`canonical_digest`]) to `sink` in
/// chunks, through a small stack buffer: no allocation per request.
pub(crate) fn for_canonical_chunks(credential: &str, mut sink: impl FnMut(&[u8])) {
    let text = canonical_trim(credential);
    if !has_standard_alphabet(text.as_bytes()) {
        // Already URL-safe (what the SDKs' encoder writes): no copy at all.
        sink(text.as_bytes());
        return;
    }
    let mut buf = [0u8; 256];
    for chunk in text.as_bytes().chunks(buf.len()) {
        for (out, &b) in buf.iter_mut().zip(chunk) {
            *out = canonical_byte(b);
        }
        sink(&buf[..chunk.len()]);
    }
}

/// Feeds the canonical text of a credential (see [`canonical_digest`]) to `hasher`, in
/// chunks of 256 bytes mapped through a stack buffer, then its length: the per-request
/// cache key. Equal canonical texts have equal lengths, so they are cut alike and hash
/// alike. The mapping is branch-free arithmetic, which the compiler turns into
/// 16-bytes-at-a-time vector code: this runs on every request.
pub(crate) fn hash_canonical(credential: &str, hasher: &mut impl Hasher) {
    let text = canonical_trim(credential).as_bytes();
    if !has_standard_alphabet(text) {
        // Already canonical (what the SDKs' encoder writes): hashed in place, cut into
        // the same chunks as the mapped copy below, so both spellings hash alike.
        for chunk in text.chunks(CANONICAL_CHUNK) {
            hasher.write(chunk);
        }
        hasher.write_usize(text.len());
        return;
    }
    let mut buf = [0u8; CANONICAL_CHUNK];
    for chunk in text.chunks(buf.len()) {
        let out = &mut buf[..chunk.len()];
        for (o, &b) in out.iter_mut().zip(chunk) {
            *o = canonical_byte(b);
        }
        hasher.write(out);
    }
    hasher.write_usize(text.len());
}

/// Whether two credential texts are spellings of one token (see [`canonical_digest`]).
pub(crate) fn same_canonical(a: &str, b: &str) -> bool {
    same_canonical_bytes(a, b.as_bytes())
}

/// [`same_canonical`] of a credential text and the raw bytes of a header value (see
/// [`credential_bytes`]): ASCII whitespace and `=` are trimmed from the raw bytes, and
/// every other byte must equal the text's, up to the `+/` spelling. Bytes equal to a
/// token's this way are that token's bytes: nothing else in them needs checking.
pub(crate) fn same_canonical_bytes(a: &str, b: &[u8]) -> bool {
    let (a, b) = (canonical_trim(a).as_bytes(), canonical_trim_bytes(b));
    // The usual case, one spelling sent again: a plain (vectorised) comparison.
    a == b
        || a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(&x, &y)| canonical_byte(x) == canonical_byte(y))
}

fn canonical_trim_bytes(raw: &[u8]) -> &[u8] {
    let raw = raw.trim_ascii();
    let end = raw
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |last| last + 1);
    &raw[..end]
}

/// The raw bytes of the credential [`find_credential`] would find, for the hot path to
/// compare with a token it has already validated ([`same_canonical_bytes`]): the value
/// of the first of `header_names` present, `authorization` only as `Bearer <v>`. Not
/// validated as text; `None` whenever this is not the plain case (too long, an
/// `authorization` of another scheme, an empty value), where [`find_credential`]
/// decides.
pub(crate) fn credential_bytes<'h>(
    headers: &'h HeaderMap,
    header_names: &[HeaderName],
) -> Option<&'h [u8]> {
    let (name, value) = header_names
        .iter()
        .find_map(|name| headers.get(name).map(|value| (name, value)))?;
    let raw = value.as_bytes();
    if raw.len() > MAX_CREDENTIAL_BYTES {
        return None;
    }
    let raw = raw.trim_ascii();
    let raw = if name == AUTHORIZATION {
        let (scheme, rest) = raw.split_at_checked(7)?;
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return None;
        }
        rest.trim_ascii()
    } else {
        raw
    };
    (!raw.is_empty()).then_some(raw)
}

/// The chunks [`hash_canonical`] feeds its hasher: a stack buffer's worth.
const CANONICAL_CHUNK: usize = 256;

fn canonical_trim(credential: &str) -> &str {
    let bytes = credential.as_bytes();
    // The usual case, a token with nothing to trim, decided on its two ends: `trim`
    // walks them as Unicode, and this runs three times per request.
    if bytes.first().is_some_and(u8::is_ascii_graphic)
        && bytes
            .last()
            .is_some_and(|&b| b.is_ascii_graphic() && b != b'=')
    {
        return credential;
    }
    credential.trim().trim_end_matches('=')
}

/// Whether `text` has a byte of the standard base64 alphabet that the URL-safe one
/// spells differently (`+`, `/`). Branch-free, so that it vectorises: it reads the
/// whole token on every request. `+` (0x2B) and `/` (0x2F) differ only in bit 2, and
/// no other byte becomes 0x2F when that bit is set: one comparison per byte.
fn has_standard_alphabet(text: &[u8]) -> bool {
    text.iter()
        .fold(0u8, |seen, &b| seen | u8::from(b | 0x04 == b'/'))
        != 0
}

/// `+` → `-` (0x2B + 2) and `/` → `_` (0x2F + 0x30), every other byte as it is;
/// written without branches so that loops over it vectorise.
fn canonical_byte(b: u8) -> u8 {
    b + u8::from(b == b'+') * 2 + u8::from(b == b'/') * 0x30
}

/// The credential text of one header, or `None` when it carries none.
fn header_text<'h>(
    name: &HeaderName,
    value: &'h HeaderValue,
) -> Result<Option<&'h str>, TokenError> {
    let len = value.as_bytes().len();
    if len > MAX_CREDENTIAL_BYTES {
        return Err(TokenError::TooLarge {
            len,
            max: MAX_CREDENTIAL_BYTES,
        });
    }
    let text = value.to_str().map_err(|_| TokenError::NotUtf8)?.trim();
    let text = if name == AUTHORIZATION {
        match bearer_value(text) {
            Some(v) => v,
            None => return Ok(None),
        }
    } else {
        text
    };
    Ok((!text.is_empty()).then_some(text))
}

/// `Bearer <v>` → `<v>`, for any case of `Bearer`.
fn bearer_value(auth: &str) -> Option<&str> {
    let (scheme, rest) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn classify(raw: &str) -> Result<Credential, TokenError> {
    if looks_like_jwt(raw) {
        decode_jose_header(raw)?;
        Ok(Credential::Bearer {
            token: AccessToken::new(raw),
        })
    } else {
        let payload = decode_x402_token(raw)?;
        Ok(Credential::X402 {
            token: AccessToken::new(raw),
            payload,
        })
    }
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    /// The hot path's raw bytes are `find_credential`'s text whenever they are given,
    /// and they are not given where `find_credential` would skip a header or refuse.
    #[test]
    fn the_raw_bytes_are_the_text_find_credential_reads_or_nothing() {
        let names = default_token_headers();
        let map = |pairs: &[(&'static str, &[u8])]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.append(*name, HeaderValue::from_bytes(value).unwrap());
            }
            h
        };
        let token: &[u8] = b"eyJ4NDAyVmVyc2lvbiI6Mn0";
        let given = [
            map(&[("payment-signature", token)]),
            map(&[("payment-signature", b"  eyJ4NDAyVmVyc2lvbiI6Mn0== \t")]),
            map(&[("authorization", b"Bearer eyJ4NDAyVmVyc2lvbiI6Mn0")]),
            map(&[("authorization", b"bEARER    eyJ4NDAyVmVyc2lvbiI6Mn0 ")]),
            map(&[
                ("payment-signature", token),
                ("authorization", b"Bearer other"),
            ]),
        ];
        for h in given {
            let raw = credential_bytes(&h, &names).expect("the plain case");
            let text = find_credential(&h, &names).unwrap().unwrap();
            assert_eq!(raw, text.as_bytes());
            assert!(same_canonical_bytes(text, raw));
        }
        let left_to_find_credential = [
            map(&[]),
            map(&[("payment-signature", b"   ")]),
            map(&[("authorization", b"Basic dXNlcg==")]),
            map(&[("authorization", b"Bearer")]),
            map(&[("authorization", b"Bearer\teyJ4")]),
            map(&[
                ("payment-signature", b" "),
                ("authorization", b"Bearer eyJ4"),
            ]),
            map(&[("payment-signature", &[b'a'; MAX_CREDENTIAL_BYTES + 1])]),
        ];
        for h in left_to_find_credential {
            assert!(credential_bytes(&h, &names).is_none());
        }
        // Bytes that are not text never equal a token, whatever surrounds them.
        assert!(!same_canonical_bytes("eyJ4", b"eyJ4\xc3\xa9"));
        assert!(!same_canonical_bytes("eyJ4", b"\xc2\xa0eyJ4"));
        assert!(same_canonical_bytes("ab+/cd", b" ab-_cd== "));
    }

    #[test]
    fn the_arithmetic_mapping_changes_only_plus_and_slash() {
        for b in 0..=255u8 {
            let expected = match b {
                b'+' => b'-',
                b'/' => b'_',
                other => other,
            };
            assert_eq!(canonical_byte(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn the_alphabet_check_finds_only_plus_and_slash() {
        for b in 0..=255u8 {
            let expected = b == b'+' || b == b'/';
            assert_eq!(has_standard_alphabet(&[b]), expected, "byte {b:#04x}");
            let mut long = vec![b'A'; 70];
            long[37] = b;
            assert_eq!(
                has_standard_alphabet(&long),
                expected,
                "byte {b:#04x} inside"
            );
        }
    }

    fn words_hash(text: &str) -> u64 {
        // Deterministic here: only equality matters.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hash_canonical(text, &mut hasher);
        hasher.finish()
    }

    #[test]
    fn spellings_hash_alike_and_other_tokens_do_not() {
        let standard = "eyJ4NDAyVmVyc2lvbiI6Mn0+/ab+/cd+/ef==";
        let url_safe = "eyJ4NDAyVmVyc2lvbiI6Mn0-_ab-_cd-_ef";
        assert_eq!(words_hash(standard), words_hash(url_safe));
        assert_eq!(words_hash(standard), words_hash(&format!(" {url_safe} ")));
        assert_ne!(
            words_hash(url_safe),
            words_hash("eyJ4NDAyVmVyc2lvbiI6Mn0-_ab-_cd-_eg")
        );
        let long_standard = "ab+/".repeat(300);
        let long_url_safe = "ab-_".repeat(300);
        assert_eq!(
            words_hash(&long_standard),
            words_hash(&long_url_safe),
            "over several chunks"
        );
        for len in 0..20 {
            let a = "x".repeat(len);
            let b = "x".repeat(len + 1);
            assert_ne!(words_hash(&a), words_hash(&b), "length {len}");
        }
    }

    #[test]
    fn spellings_of_one_token_are_the_same_and_others_are_not() {
        assert!(same_canonical("ab+/cd==", " ab-_cd "));
        assert!(!same_canonical("ab+/cd", "ab+/ce"));
        assert!(!same_canonical("ab", "abc"));
        let mut chunks = Vec::new();
        for_canonical_chunks(&"x+".repeat(300), |c| chunks.extend_from_slice(c));
        assert_eq!(chunks, "x-".repeat(300).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use super::*;
    use crate::credential::test_support::FIXTURE_JSON;

    const JWT: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiIweDEifQ.c2ln";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn extract(pairs: &[(&str, &str)]) -> Result<Option<Credential>, TokenError> {
        extract_credential(&headers(pairs), &default_token_headers())
    }

    #[test]
    fn payment_signature_carries_an_x402_token() {
        let token = STANDARD.encode(FIXTURE_JSON);
        let c = extract(&[("PAYMENT-SIGNATURE", &token)]).unwrap().unwrap();
        let Credential::X402 { token: t, payload } = &c else {
            panic!("{c:?}")
        };
        assert_eq!(t.expose(), token);
        assert_eq!(payload.accepted.scheme, "nvm:erc4337");
        assert_eq!(c.digest(), canonical_digest(&token));
    }

    #[test]
    fn bearer_jwt_in_authorization_any_scheme_case() {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let c = extract(&[("authorization", &format!("{scheme} {JWT}"))])
                .unwrap()
                .unwrap();
            assert_eq!(c, Credential::Bearer { token: JWT.into() });
        }
    }

    #[test]
    fn x402_token_in_authorization_bearer() {
        let token = STANDARD.encode(FIXTURE_JSON);
        let c = extract(&[("authorization", &format!("Bearer {token}"))])
            .unwrap()
            .unwrap();
        assert!(matches!(c, Credential::X402 { .. }));
    }

    #[test]
    fn first_present_header_wins() {
        let token = STANDARD.encode(FIXTURE_JSON);
        let both = [
            ("payment-signature", token.as_str()),
            ("authorization", &format!("Bearer {JWT}")),
        ];
        assert!(matches!(extract(&both), Ok(Some(Credential::X402 { .. }))));
        // An empty payment-signature counts as absent.
        let empty = [
            ("payment-signature", " "),
            ("authorization", &format!("Bearer {JWT}")),
        ];
        assert!(matches!(
            extract(&empty),
            Ok(Some(Credential::Bearer { .. }))
        ));
        // So does another authorization scheme.
        let basic = [("authorization", "Basic dXNlcjpwYXNz")];
        assert_eq!(extract(&basic), Ok(None));
        assert_eq!(extract(&[("authorization", "Bearer ")]), Ok(None));
        assert_eq!(extract(&[("x-other", "v")]), Ok(None));
    }

    #[test]
    fn custom_header_names() {
        let token = STANDARD.encode(FIXTURE_JSON);
        let names = [HeaderName::from_static("x-payment")];
        let found = extract_credential(&headers(&[("x-payment", &token)]), &names).unwrap();
        assert!(matches!(found, Some(Credential::X402 { .. })));
        let ignored = extract_credential(&headers(&[("payment-signature", &token)]), &names);
        assert_eq!(ignored, Ok(None));
    }

    #[test]
    fn alg_none_token_is_still_a_bearer_credential() {
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIweDEifQ.";
        let c = extract(&[("authorization", &format!("Bearer {none}"))]);
        assert!(matches!(c, Ok(Some(Credential::Bearer { .. }))));
    }

    #[test]
    fn malformed_credentials_are_errors() {
        assert_eq!(
            extract(&[("payment-signature", "%%%")]),
            Err(TokenError::Base64)
        );
        // JWT-shaped, but the header is not JSON.
        let e = extract(&[("authorization", "Bearer aGVsbG8.eyJ9.c2ln")]).unwrap_err();
        assert!(e.is_malformed(), "{e:?}");
        let mut h = HeaderMap::new();
        h.insert(
            "payment-signature",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(
            extract_credential(&h, &default_token_headers()),
            Err(TokenError::NotUtf8)
        );
        let big = "A".repeat(MAX_CREDENTIAL_BYTES + 1);
        assert!(matches!(
            extract(&[("payment-signature", &big)]),
            Err(TokenError::TooLarge { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = STANDARD.encode(FIXTURE_JSON);
        let c = extract(&[("payment-signature", &token)]).unwrap().unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(&token), "{dbg}");
        assert!(!dbg.contains("0x1b2c3d"), "signature leaked: {dbg}");
        let b = Credential::Bearer { token: JWT.into() };
        let dbg = format!("{b:?}");
        assert!(!dbg.contains(JWT) && !dbg.contains("c2ln"), "{dbg}");
    }
}
