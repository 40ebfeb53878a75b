//! Random identifiers shaped like the platform's: decimal plan/agent ids, addresses,
//! transaction hashes.

use rand::Rng;

use super::hex::random_hex;
use crate::types::{Address, AgentId, PlanId};

/// A 77-digit decimal string (the size of a uint256 id), no leading zero.
fn random_decimal_id() -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(77);
    s.push(char::from(b'1' + rng.gen_range(0..9u8)));
    for _ in 1..77 {
        s.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    s
}

pub(crate) fn new_plan_id() -> PlanId {
    random_decimal_id()
        .parse()
        .expect("77 decimal digits make a valid plan id")
}

pub(crate) fn new_agent_id() -> AgentId {
    random_decimal_id()
        .parse()
        .expect("77 decimal digits make a valid agent id")
}

pub(crate) fn new_address() -> Address {
    format!("0x{}", random_hex(20))
        .parse()
        .expect("0x and 40 hex digits make a valid address")
}

/// `0x` and 64 hex digits.
pub(crate) fn new_tx_hash() -> String {
    format!("0x{}", random_hex(32))
}
