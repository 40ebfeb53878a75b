//! [`Reservation`]: the credits one admitted request holds on its payer's ledger.

use std::sync::Arc;

use super::ledger::Ledger;
use crate::types::Credits;

/// Credits held for one admitted request. Dropped without `commit`, it gives them back.
pub(crate) struct Reservation {
    ledger: Arc<Ledger>,
    amount: Credits,
    balance_seen: Credits,
    armed: bool,
}

impl Reservation {
    pub(super) fn new(ledger: Arc<Ledger>, amount: Credits, balance_seen: Credits) -> Self {
        Reservation {
            ledger,
            amount,
            balance_seen,
            armed: true,
        }
    }

    /// Credits reserved.
    pub(crate) fn amount(&self) -> Credits {
        self.amount
    }

    /// Credits available to the holder when this request was admitted.
    pub(crate) fn balance_seen(&self) -> Credits {
        self.balance_seen
    }

    /// Gives back at once what is held beyond `amount` (a metered request whose charge
    /// is now known): other requests of the payer may use it while the charge is sent.
    pub(crate) fn shrink_to(&mut self, amount: Credits) {
        if amount >= self.amount {
            return;
        }
        let mut s = self.ledger.lock();
        s.reserved = s
            .reserved
            .saturating_sub(self.amount.saturating_sub(amount));
        self.amount = amount;
    }

    /// The charge burned `burned`; `refetch` asks for a fresh balance next time.
    pub(crate) fn commit(mut self, burned: Credits, refetch: bool) {
        self.armed = false;
        let mut s = self.ledger.lock();
        s.reserved = s.reserved.saturating_sub(self.amount);
        s.settled_total = s.settled_total.saturating_add(burned);
        s.needs_fetch |= refetch;
    }

    /// Nothing was charged.
    pub(crate) fn release(mut self, refetch: bool) {
        self.armed = false;
        let mut s = self.ledger.lock();
        s.reserved = s.reserved.saturating_sub(self.amount);
        s.needs_fetch |= refetch;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut s = self.ledger.lock();
            s.reserved = s.reserved.saturating_sub(self.amount);
        }
    }
}
