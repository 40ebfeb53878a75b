//! [`Credits`]: a uint256 credit amount that never loses precision.

use std::fmt;
use std::str::FromStr;

use ruint::aliases::U256;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credit (or token) amount, as the backend's `uint256`.
///
/// The backend rejects JSON numbers above 2^53 - 1 (`BCK.COMMON.0026`), so `Credits`
/// always serialises as a decimal string. It accepts a JSON number or a decimal string,
/// so it reads what either official SDK sends.
///
/// ```
/// use nvm_payments::Credits;
/// let c: Credits = serde_json::from_str("\"340282366920938463463374607431768211456\"").unwrap();
/// assert_eq!(c.to_string(), "340282366920938463463374607431768211456"); // 2^128
/// assert_eq!(serde_json::to_string(&Credits::from(5u64)).unwrap(), "\"5\"");
/// assert_eq!(serde_json::from_str::<Credits>("7").unwrap(), Credits::from(7u64));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credits(U256);

impl Credits {
    /// Zero credits.
    pub const ZERO: Credits = Credits(U256::ZERO);
    /// The largest representable amount (2^256 - 1).
    pub const MAX: Credits = Credits(U256::MAX);

    /// Builds an amount from a `u128`.
    pub const fn from_u128(v: u128) -> Self {
        Credits(U256::from_limbs([v as u64, (v >> 64) as u64, 0, 0]))
    }

    /// Whether this is zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// `self + rhs`, or `None` on overflow.
    pub fn checked_add(self, rhs: Credits) -> Option<Credits> {
        self.0.checked_add(rhs.0).map(Credits)
    }

    /// `self - rhs`, or `None` when `rhs > self`.
    pub fn checked_sub(self, rhs: Credits) -> Option<Credits> {
        self.0.checked_sub(rhs.0).map(Credits)
    }

    /// `self + rhs`, capped at [`Credits::MAX`].
    pub fn saturating_add(self, rhs: Credits) -> Credits {
        Credits(self.0.saturating_add(rhs.0))
    }

    /// `self - rhs`, floored at zero.
    pub fn saturating_sub(self, rhs: Credits) -> Credits {
        Credits(self.0.saturating_sub(rhs.0))
    }

    /// `self * rhs`, or `None` on overflow.
    pub fn checked_mul(self, rhs: Credits) -> Option<Credits> {
        self.0.checked_mul(rhs.0).map(Credits)
    }

    /// `self / rhs` rounded down, or `None` when `rhs` is zero.
    pub fn checked_div(self, rhs: Credits) -> Option<Credits> {
        self.0.checked_div(rhs.0).map(Credits)
    }

    /// The value as a `u64`, when it fits.
    pub fn to_u64(&self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }

    /// The value as a `u128`, when it fits.
    pub fn to_u128(&self) -> Option<u128> {
        u128::try_from(self.0).ok()
    }

    /// Clamps `self` into `[min, max]` (when `min > max`, `max` wins).
    pub fn clamp_to(self, min: Credits, max: Credits) -> Credits {
        if self > max {
            max
        } else if self < min {
            min.min(max)
        } else {
            self
        }
    }
}

impl From<u64> for Credits {
    fn from(v: u64) -> Self {
        Credits(U256::from(v))
    }
}

impl From<u32> for Credits {
    fn from(v: u32) -> Self {
        Credits(U256::from(v))
    }
}

impl From<u128> for Credits {
    fn from(v: u128) -> Self {
        Credits::from_u128(v)
    }
}

/// The error for a string that is not a non-negative decimal integer below 2^256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a decimal credit amount: {reason}")]
pub struct ParseCreditsError {
    reason: &'static str,
}

impl FromStr for Credits {
    type Err = ParseCreditsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParseCreditsError { reason: "empty" });
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseCreditsError {
                reason: "only the digits 0-9 are allowed",
            });
        }
        U256::from_str_radix(s, 10)
            .map(Credits)
            .map_err(|_| ParseCreditsError {
                reason: "larger than 2^256 - 1",
            })
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Almost every amount fits in 64 bits, whose formatting is far cheaper than a
        // 256-bit one (a receipt writes two amounts per request).
        match self.to_u64() {
            Some(small) => fmt::Display::fmt(&small, f),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credits({})", self.0)
    }
}

impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CreditsVisitor;
        impl Visitor<'_> for CreditsVisitor {
            type Value = Credits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer as a JSON number or a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Credits, E> {
                Ok(Credits::from(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Credits, E> {
                Ok(Credits::from(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Credits, E> {
                u64::try_from(v)
                    .map(Credits::from)
                    .map_err(|_| E::custom("credit amounts cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Credits, E> {
                // A JSON number above 2^53 arrives as f64 and may already have lost
                // precision; refuse it rather than guess.
                if v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0 {
                    Ok(Credits::from(v as u64))
                } else {
                    Err(E::custom(
                        "credit amounts must be whole numbers below 2^53 when sent as JSON numbers; send larger ones as decimal strings",
                    ))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Credits, E> {
                v.trim().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(CreditsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_beyond_u128() {
        let big = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        let c: Credits = serde_json::from_str(&format!("\"{big}\"")).unwrap();
        assert_eq!(c, Credits::MAX);
        assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{big}\""));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "\"-1\"", "\"1.5\"", "\"\"", "-3", "1.5", "true", "null", "\"0x10\"",
        ] {
            assert!(serde_json::from_str::<Credits>(bad).is_err(), "{bad}");
        }
        let too_big = format!("\"1{}\"", "0".repeat(80));
        assert!(serde_json::from_str::<Credits>(&too_big).is_err());
    }

    #[test]
    fn clamps() {
        let c = |v: u64| Credits::from(v);
        assert_eq!(c(5).clamp_to(c(1), c(2)), c(2));
        assert_eq!(c(0).clamp_to(c(1), c(2)), c(1));
        assert_eq!(c(2).clamp_to(c(1), c(3)), c(2));
        assert_eq!(c(1).checked_sub(c(2)), None);
    }
}
