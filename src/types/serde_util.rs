//! Serde helpers for the backend's lenient JSON: `null` as absent, uints as strings.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};
use std::fmt;

/// Reads `null` (or an absent field, with `#[serde(default)]`) as `T::default()`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads a field the crate does not depend on: `null`, an absent field (with
/// `#[serde(default)]`) or a value that does not parse as `T` all read as `None`.
///
/// The official SDKs return such fields untyped, so a backend that sends, say, a
/// `payer` that is not an address must not fail the whole response; an unparsable
/// value becomes `None`, never a made-up one.
///
pub(crate) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    match T::deserialize(value) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring an unparsable optional response field");
            Ok(None)
        }
    }
}

/// A `u64` that goes on the wire as a decimal string and is read from a number or a string.
pub(crate) mod decimal_u64 {
    use super::*;

    /// Serialises as a decimal string.
    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a JSON number, a decimal string, or `null` (as 0).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer as a number or a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom("must not be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
                if v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0 {
                    Ok(v as u64)
                } else {
                    Err(E::custom("must be a whole number below 2^53"))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.trim().parse().map_err(E::custom)
            }
            fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
                Ok(0)
            }
            fn visit_none<E: de::Error>(self) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(V)
    }
}

/// Decodes a JSON body, reading an empty (or whitespace-only) body as `{}` — the
/// backend answers some 201/204s with nothing, and Nest reads an empty request body as
/// `{}`. The error keeps the JSON path of the offending field.
pub(crate) fn from_json_body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
}

#[cfg(test)]
mod lenient_tests {
    use super::lenient;

    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default, deserialize_with = "lenient")]
        count: Option<u64>,
    }

    #[test]
    fn unparsable_absent_and_null_read_as_none() {
        for (json, want) in [
            (r#"{"count": "lots"}"#, None),
            (r#"{"count": null}"#, None),
            ("{}", None),
            (r#"{"count": 3}"#, Some(3)),
        ] {
            let a: Answer = serde_json::from_str(json).unwrap();
            assert_eq!(a.count, want, "{json}");
        }
    }
}
