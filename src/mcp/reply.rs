//! What an MCP client reads: the refusals (payment required, settlement failed,
//! backend unavailable) and the receipts of a charged call, in the shapes of the
//! official SDKs (payments-py 1.18, payments 1.11) and of the x402 MCP transport spec.

use std::time::Duration;

use rmcp::model::{CallToolResult, ContentBlock, ErrorCode, JsonObject};
use rmcp::ErrorData as McpError;
use serde_json::{json, Map, Value};

use crate::rejection::{Rejection, RejectionKind};
use crate::settle::SettleOutcome;
use crate::types::{Address, PaymentRequired, PlanId, SettleResponse};

/// The `_meta` key of the settle receipt (x402 MCP transport).
pub(crate) const META_PAYMENT_RESPONSE: &str = "x402/payment-response";
/// The `_meta` key of the Nevermined summary of the charge (the SDKs').
pub(crate) const META_CREDITS: &str = "nevermined/credits";
/// The JSON-RPC error code of a payment refusal on prompts and resources (x402 spec).
const PAYMENT_REQUIRED_CODE: i32 = 402;

/// Why a paid call is not answered with its result.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Pay (again): the `PaymentRequired` to pay with, why, and the receipt of a
    /// charge that failed.
    Payment {
        payment_required: Box<PaymentRequired>,
        message: String,
        receipt: Option<Box<SettleResponse>>,
    },
    /// The backend could not be asked: retry later. Not a payment question.
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// This server's payment setup cannot charge (the log says why).
    Misconfigured { message: String },
}

impl Refusal {
    /// A refusal of the gate, for the item whose `PaymentRequired` is `payment_required`.
    pub(crate) fn from_rejection(
        rejection: Rejection,
        payment_required: &PaymentRequired,
        retry_after: Duration,
    ) -> Self {
        let message = rejection.message.into_owned();
        match rejection.kind {
            RejectionKind::BackendUnavailable => Refusal::Unavailable {
                message,
                retry_after,
            },
            RejectionKind::Misconfigured => Refusal::Misconfigured { message },
            _ => Refusal::Payment {
                payment_required: with_error(payment_required, "payment required"),
                message,
                receipt: None,
            },
        }
    }

    /// A charge that did not settle: the result is withheld.
    pub(crate) fn settlement_failed(
        payment_required: &PaymentRequired,
        outcome: &SettleOutcome,
    ) -> Self {
        Refusal::Payment {
            payment_required: with_error(payment_required, "settlement failed"),
            message: format!(
                "the charge for this call did not settle ({:?}): its result is withheld; \
                 request {}",
                outcome.status, outcome.request_id
            ),
            receipt: outcome.receipt.clone().map(Box::new),
        }
    }

    /// As a `tools/call` result: `isError: true`. A payment refusal carries the
    /// `PaymentRequired` as `structuredContent` and as the first text (the SDKs'
    /// shape), then the x402 spec's `{"x402/error": {code: 402, message, data}}`.
    pub(crate) fn into_tool_result(self) -> Result<CallToolResult, McpError> {
        match self {
            Refusal::Payment {
                payment_required,
                message,
                receipt,
            } => {
                let pr = serde_json::to_value(&payment_required).unwrap_or(Value::Null);
                let x402_error = json!({ "x402/error": {
                    "code": PAYMENT_REQUIRED_CODE, "message": message, "data": pr } });
                let mut result = CallToolResult::error(vec![
                    ContentBlock::text(pr.to_string()),
                    ContentBlock::text(x402_error.to_string()),
                ]);
                result.structured_content = Some(pr);
                if let Some(receipt) = receipt {
                    let mut meta = rmcp::model::MetaObject::default();
                    meta.insert(META_PAYMENT_RESPONSE.to_owned(), receipt_json(*receipt));
                    result.meta = Some(meta);
                }
                Ok(result)
            }
            Refusal::Unavailable {
                message,
                retry_after,
            } => {
                let body = unavailable_body(&message, retry_after);
                let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
                result.structured_content = Some(body);
                Ok(result)
            }
            Refusal::Misconfigured { message } => Err(McpError::internal_error(message, None)),
        }
    }

    /// As the JSON-RPC error of a `prompts/get` or `resources/read`: code 402 with
    /// the `PaymentRequired` in `data` (x402 spec), or an internal error for an outage
    /// (with `retryAfterSeconds` in `data`) and a misconfiguration.
    pub(crate) fn into_error(self) -> McpError {
        match self {
            Refusal::Payment {
                payment_required,
                message,
                ..
            } => McpError::new(
                ErrorCode(PAYMENT_REQUIRED_CODE),
                message,
                serde_json::to_value(&payment_required).ok(),
            ),
            Refusal::Unavailable {
                message,
                retry_after,
            } => {
                let data = unavailable_body(&message, retry_after);
                McpError::internal_error(message, Some(data))
            }
            Refusal::Misconfigured { message } => McpError::internal_error(message, None),
        }
    }
}

fn with_error(payment_required: &PaymentRequired, error: &str) -> Box<PaymentRequired> {
    let mut payment_required = Box::new(payment_required.clone());
    payment_required.error = Some(error.to_owned());
    payment_required
}

fn unavailable_body(message: &str, retry_after: Duration) -> Value {
    json!({
        "error": RejectionKind::BackendUnavailable.code(),
        "message": message,
        "retryable": true,
        "retryAfterSeconds": retry_after.as_secs().max(1),
    })
}

/// The settle receipt as the SDK's client reads it: known fields only, no nulls.
///
/// Built by hand, as the HTTP layer writes its receipt header (`layer/receipt.rs`):
/// it is made on every charged call, and serde's `to_value` went through its
/// serializer for a handful of fixed fields. A unit test holds it equal to serde's.
fn receipt_json(receipt: SettleResponse) -> Value {
    receipt_object(receipt, None, None)
}

/// [`receipt_json`], taking the receipt's strings rather than copying them, with
/// `creditsRedeemed` and `remainingBalance` already written when the caller has them.
fn receipt_object(r: SettleResponse, redeemed: Option<&str>, remaining: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("success".to_owned(), Value::Bool(r.success));
    if let Some(reason) = r.error_reason {
        m.insert("errorReason".to_owned(), Value::String(reason));
    }
    if let Some(payer) = &r.payer {
        m.insert("payer".to_owned(), payer.as_str().into());
    }
    m.insert("transaction".to_owned(), Value::String(r.transaction));
    m.insert("network".to_owned(), Value::String(r.network));
    if let Some(credits) = &r.credits_redeemed {
        let text = redeemed.map_or_else(|| credits.to_string(), str::to_owned);
        m.insert("creditsRedeemed".to_owned(), Value::String(text));
    }
    if let Some(balance) = &r.remaining_balance {
        let value = match remaining {
            // Same digits: reuse them rather than write the number again.
            Some(Value::String(text)) => Value::String(text.clone()),
            _ => Value::String(balance.to_string()),
        };
        m.insert("remainingBalance".to_owned(), value);
    }
    if let Some(tx) = r.order_tx {
        m.insert("orderTx".to_owned(), Value::String(tx));
    }
    Value::Object(m)
}

/// The `_meta` keys of a served paid call: the settle receipt and the Nevermined
/// summary, or only the summary with `"0"` when the charge was waived. Takes the
/// outcome, so that its receipt's strings move into the answer instead of being copied.
pub(crate) fn receipts(
    outcome: Option<SettleOutcome>,
    plan_id: &PlanId,
    subscriber: &Address,
) -> JsonObject {
    let mut meta = JsonObject::new();
    let (credits_charged, receipt) = match outcome {
        Some(outcome) => (Some(outcome.credits), outcome.receipt),
        None => (None, None),
    };
    // Each amount is written once and shared by both objects.
    let redeemed = match (
        credits_charged,
        receipt.as_ref().and_then(|r| r.credits_redeemed),
    ) {
        (_, Some(credits)) => credits.to_string(),
        (Some(credits), None) => credits.to_string(),
        (None, None) => "0".to_owned(),
    };
    let remaining = match receipt.as_ref().and_then(|r| r.remaining_balance) {
        Some(balance) => Value::String(balance.to_string()),
        None => Value::Null,
    };
    let tx_hash = match receipt.as_ref().map(|r| r.transaction.as_str()) {
        Some(tx) if !tx.is_empty() => Value::String(tx.to_owned()),
        _ => Value::Null,
    };
    if let Some(receipt) = receipt {
        let object = receipt_object(receipt, Some(&redeemed), Some(&remaining));
        meta.insert(META_PAYMENT_RESPONSE.to_owned(), object);
    }
    let mut credits = Map::new();
    credits.insert("txHash".to_owned(), tx_hash);
    credits.insert("creditsRedeemed".to_owned(), Value::String(redeemed));
    credits.insert("remainingBalance".to_owned(), remaining);
    credits.insert("planId".to_owned(), plan_id.as_str().into());
    credits.insert("subscriberAddress".to_owned(), subscriber.as_str().into());
    credits.insert("success".to_owned(), Value::Bool(true));
    meta.insert(META_CREDITS.to_owned(), Value::Object(credits));
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::SettleStatus;
    use crate::types::Credits;

    fn outcome(status: SettleStatus, receipt: Option<SettleResponse>) -> SettleOutcome {
        SettleOutcome {
            status,
            request_id: "r-1".into(),
            plan_id: "42".parse().unwrap(),
            subscriber: "0x00000000000000000000000000000000000000a1"
                .parse()
                .unwrap(),
            credits: Credits::from(2u64),
            attempts: 1,
            receipt,
            reason: None,
            retry_later: false,
        }
    }

    fn pr() -> PaymentRequired {
        serde_json::from_value(json!({"x402Version": 2})).unwrap()
    }

    fn settled() -> SettleResponse {
        serde_json::from_value(json!({"success": true, "transaction": "0xtx",
            "network": "eip155:84532", "creditsRedeemed": "2", "remainingBalance": "98"}))
        .unwrap()
    }

    /// The receipts as serde wrote them before they were built by hand.
    fn receipts_by_serde(
        outcome: Option<&SettleOutcome>,
        plan_id: &PlanId,
        subscriber: &Address,
    ) -> JsonObject {
        let mut meta = JsonObject::new();
        let credits = match outcome {
            Some(outcome) => {
                let receipt = outcome.receipt.as_ref();
                if let Some(receipt) = receipt {
                    meta.insert(
                        META_PAYMENT_RESPONSE.to_owned(),
                        serde_json::to_value(receipt).unwrap(),
                    );
                }
                json!({
                    "txHash": receipt.map(|r| r.transaction.as_str()).filter(|t| !t.is_empty()),
                    "creditsRedeemed": receipt
                        .and_then(|r| r.credits_redeemed)
                        .unwrap_or(outcome.credits)
                        .to_string(),
                    "remainingBalance": receipt
                        .and_then(|r| r.remaining_balance)
                        .map(|b| b.to_string()),
                    "planId": plan_id,
                    "subscriberAddress": subscriber,
                    "success": true,
                })
            }
            None => json!({
                "txHash": null, "creditsRedeemed": "0", "remainingBalance": null,
                "planId": plan_id, "subscriberAddress": subscriber, "success": true,
            }),
        };
        meta.insert(META_CREDITS.to_owned(), credits);
        meta
    }

    #[test]
    fn receipts_built_by_hand_are_the_ones_serde_writes() {
        let full: SettleResponse = serde_json::from_value(json!({"success": false,
            "errorReason": "a \"quoted\" reason", "payer": "0x00000000000000000000000000000000000000a1",
            "transaction": "0xtx", "network": "eip155:84532", "creditsRedeemed": "2",
            "remainingBalance": "98", "orderTx": "0xorder"}))
        .unwrap();
        let sparse: SettleResponse =
            serde_json::from_value(json!({"success": true, "transaction": "", "network": ""}))
                .unwrap();
        for receipt in [Some(settled()), Some(full), Some(sparse), None] {
            let o = outcome(SettleStatus::Settled, receipt);
            assert_eq!(
                receipts(Some(o.clone()), &o.plan_id, &o.subscriber),
                receipts_by_serde(Some(&o), &o.plan_id, &o.subscriber),
                "{o:?}"
            );
            if let Some(receipt) = &o.receipt {
                assert_eq!(
                    receipt_json(receipt.clone()),
                    serde_json::to_value(receipt).unwrap()
                );
            }
        }
        let o = outcome(SettleStatus::Settled, None);
        assert_eq!(
            receipts(None, &o.plan_id, &o.subscriber),
            receipts_by_serde(None, &o.plan_id, &o.subscriber)
        );
    }

    #[test]
    fn receipts_have_the_sdks_keys_and_a_waived_charge_says_zero() {
        let o = outcome(SettleStatus::Settled, Some(settled()));
        let meta = receipts(Some(o.clone()), &o.plan_id, &o.subscriber);
        assert_eq!(meta[META_PAYMENT_RESPONSE]["creditsRedeemed"], "2");
        let credits = &meta[META_CREDITS];
        assert_eq!(credits["txHash"], "0xtx");
        assert_eq!(credits["remainingBalance"], "98");
        assert_eq!(credits["planId"], "42");
        assert_eq!(credits["subscriberAddress"], o.subscriber.to_string());

        let waived = receipts(None, &o.plan_id, &o.subscriber);
        assert!(!waived.contains_key(META_PAYMENT_RESPONSE));
        assert_eq!(waived[META_CREDITS]["creditsRedeemed"], "0");
        assert_eq!(waived[META_CREDITS]["txHash"], Value::Null);
    }

    #[test]
    fn a_failed_settle_is_a_settlement_failed_refusal_with_its_receipt() {
        let mut refused = settled();
        refused.success = false;
        let o = outcome(SettleStatus::Failed, Some(refused));
        let result = Refusal::settlement_failed(&pr(), &o)
            .into_tool_result()
            .unwrap();
        assert_eq!(result.is_error, Some(true));
        assert_eq!(
            result.structured_content.as_ref().unwrap()["error"],
            "settlement failed"
        );
        let meta = result.meta.unwrap();
        assert_eq!(meta[META_PAYMENT_RESPONSE]["success"], false);
        let error = Refusal::settlement_failed(&pr(), &o).into_error();
        assert_eq!(error.code.0, 402);
        assert_eq!(error.data.unwrap()["error"], "settlement failed");
    }

    #[test]
    fn an_outage_is_not_a_payment_refusal() {
        let refusal =
            Refusal::from_rejection(Rejection::unavailable(), &pr(), Duration::from_secs(5));
        let result = refusal.into_tool_result().unwrap();
        let body = result.structured_content.unwrap();
        assert_eq!(body["error"], "backend_unavailable");
        assert_eq!(body["retryAfterSeconds"], 5);
        assert!(body.get("accepts").is_none());
        let error =
            Refusal::from_rejection(Rejection::unavailable(), &pr(), Duration::from_secs(5))
                .into_error();
        assert_ne!(error.code.0, 402);
    }
}
