//! Verification and balance caches. (being built)
