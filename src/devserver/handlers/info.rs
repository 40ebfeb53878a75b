//! Deployment info (`GET /`, docs/wire-notes.md §5.4) and the JWKS.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::devserver::hex::hex;
use crate::devserver::DevServerState;

const CONTRACTS: [&str; 19] = [
    "AccessManager",
    "AgreementsStore",
    "AssetsRegistry",
    "DistributePaymentsCondition",
    "FiatPaymentTemplate",
    "FiatSettlementCondition",
    "FixedPaymentTemplate",
    "LinearPricing",
    "LockPaymentCondition",
    "NFT1155Credits",
    "NFT1155ExpirableCredits",
    "NFT1155ExpirableCreditsV2",
    "NVMConfig",
    "OneTimeCreatorHook",
    "PayAsYouGoTemplate",
    "PaymentsVault",
    "ProtocolStandardFees",
    "TokenUtils",
    "TransferCreditsCondition",
];

/// A made-up but stable address for a contract name.
fn contract_address(name: &str) -> String {
    let digest = Sha256::digest(format!("nvm-devserver:{name}"));
    format!("0x{}", hex(&digest[..20]))
}

pub(crate) async fn deployment() -> Json<Value> {
    let contracts: Map<String, Value> = CONTRACTS
        .iter()
        .map(|name| ((*name).to_owned(), Value::String(contract_address(name))))
        .collect();
    Json(json!({
        "deployment": {
            "version": concat!("nvm-payments-devserver-", env!("CARGO_PKG_VERSION")),
            "contracts": contracts,
        }
    }))
}

pub(crate) async fn jwks(State(state): State<DevServerState>) -> Json<Value> {
    Json(state.keys().jwks())
}
