//! Secrets: [`ApiKey`] and [`AccessToken`], whose `Debug` never shows the value.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest of a secret, for cache keys and logs.
///
/// `Display` prints the first 8 bytes in hex: enough to correlate log lines, useless to
/// an attacker.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digests arbitrary secret bytes.
    pub fn of(secret: &[u8]) -> Self {
        TokenDigest(Sha256::digest(secret).into())
    }

    /// A digest computed elsewhere (e.g. over a canonical form of the secret).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenDigest(bytes)
    }

    /// The full 32-byte digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                $name(value.into())
            }

            /// The secret itself. Call this only where the value must go on the wire.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// A digest that is safe to log or to use as a cache key.
            pub fn digest(&self) -> TokenDigest {
                TokenDigest::of(self.0.as_bytes())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(sha256:{})"), self.digest())
            }
        }

        impl From<String> for $name {
            fn from(v: String) -> Self {
                $name(v)
            }
        }

        impl From<&str> for $name {
            fn from(v: &str) -> Self {
                $name(v.to_owned())
            }
        }
    };
}

secret_string!(
    /// A Nevermined API key, `<prefix>:<JWT>`. `Debug` shows only a digest.
    ///
    /// ```
    /// use nvm_payments::ApiKey;
    /// let key = ApiKey::new("sandbox:eyJhbGciOi.secret.sig");
    /// assert!(!format!("{key:?}").contains("secret"));
    /// ```
    ApiKey
);

secret_string!(
    /// An access token presented by a subscriber (an x402 envelope or a bearer JWT).
    /// `Debug` shows only a digest.
    AccessToken
);

secret_string!(
    /// Any other secret string (a password, a token for an agent's own API).
    /// `Debug` shows only a digest.
    SecretString
);
