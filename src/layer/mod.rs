//! The payment layer. (being built)
