//! Malformed backend answers never panic the client: every wire type either decodes or
//! fails with an error, for arbitrary JSON and arbitrary bytes.

use nvm_payments::types::*;
use proptest::prelude::*;

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "[0-9]{0,90}".prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
        "0x[0-9a-fA-F]{38,42}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("planId".to_owned()),
                    Just("balance".to_owned()),
                    Just("isSubscriber".to_owned()),
                    Just("holderAddress".to_owned()),
                    Just("planType".to_owned()),
                    Just("registry".to_owned()),
                    Just("credits".to_owned()),
                    Just("amount".to_owned()),
                    Just("success".to_owned()),
                    Just("isValid".to_owned()),
                    Just("creditsRedeemed".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn decode_all(bytes: &[u8]) {
    let _ = serde_json::from_slice::<PlanBalance>(bytes);
    let _ = serde_json::from_slice::<Plan>(bytes);
    let _ = serde_json::from_slice::<Agent>(bytes);
    let _ = serde_json::from_slice::<NvmApiResult>(bytes);
    let _ = serde_json::from_slice::<VerifyResponse>(bytes);
    let _ = serde_json::from_slice::<SettleResponse>(bytes);
    let _ = serde_json::from_slice::<ErrorEnvelope>(bytes);
    let _ = serde_json::from_slice::<PermissionsResponse>(bytes);
    let _ = serde_json::from_slice::<FiatPaymentResponse>(bytes);
    let _ = serde_json::from_slice::<RegisterPlanRequest>(bytes);
    let _ = serde_json::from_slice::<PaymentRequired>(bytes);
    let _ = serde_json::from_slice::<X402TokenPayload>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        decode_all(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&bytes);
    }

    #[test]
    fn credits_parse_or_refuse(s in ".{0,100}") {
        if let Ok(c) = s.parse::<Credits>() {
            // Whatever parses prints back as its canonical decimal form.
            prop_assert_eq!(c.to_string().parse::<Credits>().unwrap(), c);
        }
    }

    #[test]
    fn credits_round_trip_any_u128(v in any::<u128>()) {
        let c = Credits::from(v);
        let json = serde_json::to_string(&c).unwrap();
        prop_assert_eq!(json.clone(), format!("\"{v}\""));
        prop_assert_eq!(serde_json::from_str::<Credits>(&json).unwrap(), c);
    }
}
