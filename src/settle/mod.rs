//! Settlement: idempotent charges, retries, outcomes. (being built)
