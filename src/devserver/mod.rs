//! The local wire-compatible devserver. (being built)
