//! Why a request is refused: [`RejectionKind`], the `error` code a caller reads, and
//! [`Rejection`], a kind with its human message.
//!
//! Every refusal is built here, by one constructor each, so each message is written
//! once and no message can carry a token (none takes one). The steps below the layer
//! (credential, authentication, balance) answer with these; the layer turns them into
//! responses (`layer/rejection.rs`).

use std::borrow::Cow;
use std::fmt::Display;

use http::StatusCode;

use crate::types::{AgentId, Credits, PlanId};

/// Why the layer refused a request (the `error` code of the JSON body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// 402 `payment_required`: no credential in any configured header.
    PaymentRequired,
    /// 400 `malformed_token`: the credential does not decode, or is too large.
    MalformedToken,
    /// 402 `invalid_token`: forged, expired, revoked or already used.
    InvalidToken,
    /// 402 (or 403) `plan_not_accepted`: the token pays with a plan this route does not accept.
    PlanNotAccepted,
    /// 402 (or 403) `wrong_agent`: the token is for another agent.
    WrongAgent,
    /// 402 `insufficient_balance`: not a subscriber, or the balance is below the charge.
    InsufficientBalance,
    /// 503 `backend_unavailable` with `Retry-After`: the backend could not be reached
    /// and nothing cached can decide, or the layer is at one of its bounds.
    BackendUnavailable,
    /// 500 `payment_misconfigured`: the layer's configuration can never be charged
    /// (the log says why). The caller is not at fault.
    Misconfigured,
}

impl RejectionKind {
    /// The `error` code of the body.
    pub fn code(self) -> &'static str {
        match self {
            RejectionKind::PaymentRequired => "payment_required",
            RejectionKind::MalformedToken => "malformed_token",
            RejectionKind::InvalidToken => "invalid_token",
            RejectionKind::PlanNotAccepted => "plan_not_accepted",
            RejectionKind::WrongAgent => "wrong_agent",
            RejectionKind::InsufficientBalance => "insufficient_balance",
            RejectionKind::BackendUnavailable => "backend_unavailable",
            RejectionKind::Misconfigured => "payment_misconfigured",
        }
    }

    /// The HTTP status; `mismatch` is the configured status of plan/agent mismatches.
    pub(crate) fn status(self, mismatch: StatusCode) -> StatusCode {
        match self {
            RejectionKind::MalformedToken => StatusCode::BAD_REQUEST,
            RejectionKind::PlanNotAccepted | RejectionKind::WrongAgent => mismatch,
            RejectionKind::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectionKind::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::PAYMENT_REQUIRED,
        }
    }
}

/// A refusal with its human message (which never contains the token).
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub(crate) kind: RejectionKind,
    pub(crate) message: Cow<'static, str>,
}

impl Rejection {
    fn new(kind: RejectionKind, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            kind,
            message: message.into(),
        }
    }

    // ---- the credential (step 1) ----

    pub(crate) fn no_credential() -> Self {
        Self::new(
            RejectionKind::PaymentRequired,
            "payment required: send an x402 access token in the payment-signature header",
        )
    }

    pub(crate) fn credential_too_large() -> Self {
        Self::new(RejectionKind::MalformedToken, "the credential is too large")
    }

    pub(crate) fn credential_not_ascii() -> Self {
        Self::new(
            RejectionKind::MalformedToken,
            "the credential is not visible ASCII",
        )
    }

    pub(crate) fn credential_malformed() -> Self {
        Self::new(
            RejectionKind::MalformedToken,
            "the credential does not decode",
        )
    }

    pub(crate) fn credential_invalid() -> Self {
        Self::new(RejectionKind::InvalidToken, "the credential is not valid")
    }

    // ---- authentication (step 2) ----

    pub(crate) fn x402_only() -> Self {
        Self::new(
            RejectionKind::InvalidToken,
            "this route accepts x402 access tokens only (payment-signature header)",
        )
    }

    pub(crate) fn plan_not_accepted(plan_id: &PlanId) -> Self {
        Self::new(
            RejectionKind::PlanNotAccepted,
            format!("this route does not accept plan {plan_id}"),
        )
    }

    pub(crate) fn wrong_agent(theirs: &AgentId, ours: &AgentId) -> Self {
        Self::new(
            RejectionKind::WrongAgent,
            format!("the token is for agent {theirs}, this is agent {ours}"),
        )
    }

    /// The facilitator answered an error about the token (`code`: its backend code).
    pub(crate) fn facilitator_refused(code: &str) -> Self {
        Self::new(
            RejectionKind::InvalidToken,
            format!("the facilitator refused the token ({code})"),
        )
    }

    /// The facilitator answered `isValid: false`; `reason` is already checked to be
    /// short and free of the token, or `None`.
    pub(crate) fn facilitator_invalid(kind: RejectionKind, reason: Option<&str>) -> Self {
        let message = match reason {
            Some(reason) => format!("the facilitator did not accept the token: {reason}"),
            None => "the facilitator did not accept the token".to_owned(),
        };
        Self::new(kind, message)
    }

    pub(crate) fn bearer_malformed() -> Self {
        Self::new(
            RejectionKind::MalformedToken,
            "the bearer token does not decode",
        )
    }

    /// `why` is a `TokenError`, whose messages never contain the credential.
    pub(crate) fn bearer_not_acceptable(why: impl Display) -> Self {
        Self::new(
            RejectionKind::InvalidToken,
            format!("the bearer token is not acceptable: {why}"),
        )
    }

    pub(crate) fn bearer_expired() -> Self {
        Self::new(RejectionKind::InvalidToken, "the token has expired")
    }

    pub(crate) fn issuer_keys_unavailable() -> Self {
        Self::new(
            RejectionKind::BackendUnavailable,
            "the token issuer's keys cannot be fetched; retry later",
        )
    }

    pub(crate) fn issuer_keys_unusable() -> Self {
        Self::new(
            RejectionKind::BackendUnavailable,
            "the token issuer's keys are unusable",
        )
    }

    pub(crate) fn too_many_verifications() -> Self {
        Self::new(
            RejectionKind::BackendUnavailable,
            "too many payment verifications in flight; retry later",
        )
    }

    pub(crate) fn single_use_spent() -> Self {
        Self::new(
            RejectionKind::InvalidToken,
            "this single-use (x402 v3) token was already used",
        )
    }

    pub(crate) fn single_use_in_flight() -> Self {
        Self::new(
            RejectionKind::InvalidToken,
            "this single-use (x402 v3) token is being used by another request",
        )
    }

    pub(crate) fn single_use_full() -> Self {
        Self::new(
            RejectionKind::BackendUnavailable,
            "too many single-use tokens were spent moments ago; retry later",
        )
    }

    // ---- the balance (step 3) ----

    pub(crate) fn not_subscriber() -> Self {
        Self::new(
            RejectionKind::InsufficientBalance,
            "the caller is not a subscriber of the plan",
        )
    }

    pub(crate) fn insufficient(available: Credits) -> Self {
        Self::new(
            RejectionKind::InsufficientBalance,
            format!("insufficient balance: {available} credits available"),
        )
    }

    // ---- any step ----

    /// 503 for a backend call that failed, logged with the error (never a token).
    pub(crate) fn backend_failed(err: &crate::client::Error) -> Self {
        tracing::warn!(error = %err, "payment backend unavailable");
        Self::unavailable()
    }

    /// 503: the backend could not answer; the caller may retry.
    pub(crate) fn unavailable() -> Self {
        Self::new(
            RejectionKind::BackendUnavailable,
            "the payment backend is unavailable; retry later",
        )
    }

    /// 503: too many charges in flight (`PendingFull::Reject`).
    pub(crate) fn too_many_charges() -> Self {
        Self::new(
            RejectionKind::BackendUnavailable,
            "too many charges are waiting for the payment backend; retry later",
        )
    }

    /// 500: this route's payment setup can never charge (the log says why).
    pub(crate) fn misconfigured() -> Self {
        Self::new(
            RejectionKind::Misconfigured,
            "the payment configuration of this route cannot be charged",
        )
    }
}
