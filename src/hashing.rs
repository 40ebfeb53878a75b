//! The hasher of the layer's in-memory tables (verifications, ledgers, plans, routes,
//! charges in flight): foldhash, seeded at random per table so that callers cannot aim
//! collisions at one, and several times cheaper than std's SipHash on the short keys the
//! hot path looks up (BENCHMARKS.md, "Where the time goes").

/// A randomly seeded foldhash `BuildHasher`.
pub(crate) type RandomState = foldhash::quality::RandomState;

/// A `HashMap` with [`RandomState`].
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
