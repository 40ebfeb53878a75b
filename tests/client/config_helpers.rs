//! The price and credits helpers produce the official SDKs' JSON byte for byte
//! (wire-spec §3.3, §3.4).

use nvm_payments::*;

const TOKEN: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const RECV: &str = "0x71e6F7f8C68e7e2E96B3c90655c2D2cA376Bc3fd";
const Z: &str = "0x0000000000000000000000000000000000000000";

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

fn a(s: &str) -> Address {
    s.parse().unwrap()
}

#[test]
fn price_configs() {
    let tail = format!(
        r#""contractAddress":"{Z}","feeController":"{Z}","externalPriceAddress":"{Z}","templateAddress":"{Z}""#
    );
    assert_eq!(
        json(&get_erc20_price_config(
            Credits::from(20u64),
            a(TOKEN),
            a(RECV)
        )),
        format!(
            r#"{{"tokenAddress":"{TOKEN}","amounts":["20"],"receivers":["{RECV}"],{tail},"isCrypto":true}}"#
        )
    );
    assert_eq!(
        json(&get_native_token_price_config(Credits::from(5u64), a(RECV))),
        format!(
            r#"{{"tokenAddress":"{Z}","amounts":["5"],"receivers":["{RECV}"],{tail},"isCrypto":true}}"#
        )
    );
    assert_eq!(
        json(&get_fiat_price_config(
            Credits::from(2_000_000u64),
            a(RECV),
            "USD"
        )),
        format!(
            r#"{{"tokenAddress":"{Z}","amounts":["2000000"],"receivers":["{RECV}"],{tail},"isCrypto":false,"currency":"USD"}}"#
        )
    );
    assert_eq!(
        json(&get_free_price_config()),
        format!(r#"{{"tokenAddress":"{Z}","amounts":[],"receivers":[],{tail},"isCrypto":true}}"#)
    );
}

#[test]
fn credits_configs() {
    let c = |v: u64| Credits::from(v);
    assert_eq!(
        json(&get_fixed_credits_config(c(100), c(1))),
        r#"{"isRedemptionAmountFixed":true,"redemptionType":4,"onchainMirror":false,"durationSecs":"0","amount":"100","minAmount":"1","maxAmount":"1"}"#
    );
    assert_eq!(
        json(&get_dynamic_credits_config(c(10), c(1), c(2))),
        r#"{"isRedemptionAmountFixed":false,"redemptionType":4,"onchainMirror":false,"durationSecs":"0","amount":"10","minAmount":"1","maxAmount":"2"}"#
    );
    assert_eq!(
        json(&get_expirable_duration_config(86_400)),
        r#"{"isRedemptionAmountFixed":false,"redemptionType":4,"onchainMirror":false,"durationSecs":"86400","amount":"1","minAmount":"1","maxAmount":"1"}"#
    );
    assert_eq!(
        json(&get_non_expirable_duration_config()),
        r#"{"isRedemptionAmountFixed":false,"redemptionType":4,"onchainMirror":false,"durationSecs":"0","amount":"1","minAmount":"1","maxAmount":"1"}"#
    );
}

#[test]
fn configs_read_back_what_python_sends() {
    // Python sends small ints as numbers and may send nulls.
    let cfg: types::PlanCreditsConfig = serde_json::from_str(
        r#"{"isRedemptionAmountFixed":true,"redemptionType":4,"onchainMirror":null,"durationSecs":0,"amount":100,"minAmount":"1","maxAmount":"1","proofRequired":false}"#,
    )
    .unwrap();
    assert_eq!(
        cfg,
        get_fixed_credits_config(Credits::from(100u64), Credits::from(1u64))
    );
}
