//! Identifier newtypes: [`PlanId`], [`AgentId`], [`Address`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The error for an identifier that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct ParseIdError {
    kind: &'static str,
    reason: &'static str,
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.len() <= 80 && s.bytes().all(|b| b.is_ascii_digit())
}

macro_rules! decimal_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        // Shared text: ids are cloned into every caller, charge and outcome, and a
        // clone of an `Arc<str>` does not allocate.
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as it goes on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let s = s.trim();
                if is_decimal(s) {
                    Ok($name(s.into()))
                } else {
                    Err(ParseIdError { kind: $kind, reason: "expected a decimal integer string" })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct IdVisitor;
                impl Visitor<'_> for IdVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", $kind, " as a decimal string or integer"))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Ok($name(v.to_string().into()))
                    }
                    fn visit_u128<E: de::Error>(self, v: u128) -> Result<$name, E> {
                        Ok($name(v.to_string().into()))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(IdVisitor)
            }
        }
    };
}

decimal_id!(
    /// A plan id: a large decimal integer carried as a string (docs/wire-notes.md §2.3).
    ///
    /// ```
    /// use nvm_payments::PlanId;
    /// let id: PlanId = "105906633592154016712415751065660953070604027297000423385655551747721326921578".parse().unwrap();
    /// assert!("0xabc".parse::<PlanId>().is_err());
    /// # let _ = id;
    /// ```
    PlanId,
    "plan id"
);

decimal_id!(
    /// An agent id: a large decimal integer carried as a string.
    AgentId,
    "agent id"
);

/// An EVM account address, `0x` and 40 hex digits.
///
/// Addresses compare and hash case-insensitively, so a checksummed and a lower-case
/// spelling of one account are the same key; the spelling given is kept for the wire.
///
/// ```
/// use nvm_payments::Address;
/// let a: Address = "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd".parse().unwrap();
/// let b: Address = "0x71e6f7f8c68e7e2e96b3c90655c2d2ca376bc3fd".parse().unwrap();
/// assert_eq!(a, b);
/// assert!("0x123".parse::<Address>().is_err());
/// ```
#[derive(Clone)]
pub struct Address(Arc<str>);

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for Address {}

impl std::hash::Hash for Address {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .to_ascii_lowercase()
            .cmp(&other.0.to_ascii_lowercase())
    }
}

impl Address {
    /// The zero address, `0x0000000000000000000000000000000000000000`.
    pub fn zero() -> Self {
        Address(format!("0x{}", "0".repeat(40)).into())
    }

    /// The address as it was spelled, `0x…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the zero address.
    pub fn is_zero(&self) -> bool {
        self.0[2..].bytes().all(|b| b == b'0')
    }
}

impl FromStr for Address {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(ParseIdError {
                kind: "address",
                reason: "expected 0x followed by 40 hex digits",
            })?;
        if hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Address(format!("0x{hex}").into()))
        } else {
            Err(ParseIdError {
                kind: "address",
                reason: "expected 0x followed by 40 hex digits",
            })
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_numbers_and_strings() {
        let a: PlanId = serde_json::from_str("\"123\"").unwrap();
        let b: PlanId = serde_json::from_str("123").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"123\"");
        assert!(serde_json::from_str::<AgentId>("\"abc\"").is_err());
        assert!(serde_json::from_str::<AgentId>("-1").is_err());
    }

    #[test]
    fn address_zero() {
        assert!(Address::zero().is_zero());
        assert_eq!(Address::zero().to_string().len(), 42);
    }
}
