//! Charge by usage: the [`Meter`] a handler counts units on while it streams, and the
//! [`MeterRule`] that turns those units into credits.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::types::Credits;

/// The units a metered response has produced (tokens, events, bytes: the handler
/// decides), counted while it streams.
///
/// The handler gets it from [`PaymentContext::meter`](crate::PaymentContext::meter) and
/// clones it into the task that produces the stream; [`add`](Self::add) is one atomic
/// add. When the response body ends (or the client goes away) the layer reads the
/// meter once, *closes* it and charges what it read: units added afterwards are not
/// charged, and [`is_closed`](Self::is_closed) tells the producer it may stop.
///
/// ```
/// use nvm_payments::settle::Meter;
/// let meter = Meter::detached();
/// let producer = meter.clone();
/// producer.add(3);
/// producer.add(4);
/// assert_eq!(meter.units(), 7);
/// assert!(!meter.is_closed());
/// ```
#[derive(Clone, Default)]
pub struct Meter {
    state: Arc<MeterState>,
}

#[derive(Default)]
struct MeterState {
    units: AtomicU64,
    closed: AtomicBool,
}

impl Meter {
    /// A meter no layer reads: what [`PaymentContext::meter`](crate::PaymentContext::meter)
    /// answers on a request that is not metered, and a stand-in for tests.
    pub fn detached() -> Self {
        Meter::default()
    }

    /// Counts `units` more. Relaxed: the count is read once, after the body has ended
    /// or been dropped, and no other memory depends on it.
    #[inline]
    pub fn add(&self, units: u64) {
        self.state.units.fetch_add(units, Ordering::Relaxed);
    }

    /// Units counted so far.
    pub fn units(&self) -> u64 {
        self.state.units.load(Ordering::Relaxed)
    }

    /// Whether the layer has read the meter to charge: the body ended or the client
    /// went away. Units added from now on are not charged.
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Relaxed)
    }

    /// Reads the meter for the charge and closes it.
    pub(crate) fn close(&self) -> u64 {
        self.state.closed.store(true, Ordering::Relaxed);
        self.units()
    }
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("units", &self.units())
            .field("closed", &self.is_closed())
            .finish()
    }
}

type PriceFn = dyn Fn(u64) -> Credits + Send + Sync;

#[derive(Clone)]
enum Price {
    PerUnit(Credits),
    PerBlock { units: u64, credits: Credits },
    Custom(Arc<PriceFn>),
}

/// How a metered request's units become credits, and the most it may cost.
///
/// Set it on the layer for every route (`PaymentLayerBuilder::meter`) or for one
/// (`PaymentLayerBuilder::meter_route`). The layer reserves the cap (or the plan's
/// maximum per request when there is none) at admission, and at the end of the body
/// charges `credits(units)` clamped to the plan's minimum and maximum and to that
/// reservation.
///
/// ```
/// use nvm_payments::{Credits, MeterRule};
/// assert_eq!(MeterRule::per_unit(2u64).credits(5), Credits::from(10u64));
/// // 1 credit per started block of 100 tokens.
/// let per_100 = MeterRule::per_block(100, 1u64);
/// assert_eq!(per_100.credits(0), Credits::ZERO);
/// assert_eq!(per_100.credits(101), Credits::from(2u64));
/// let custom = MeterRule::custom(|units| Credits::from(units / 10)).capped_at(5u64);
/// assert_eq!(custom.credits(42), Credits::from(4u64));
/// assert_eq!(custom.cap(), Some(Credits::from(5u64)));
/// ```
#[derive(Clone)]
pub struct MeterRule {
    price: Price,
    cap: Option<Credits>,
}

impl MeterRule {
    /// `credits` for each unit.
    pub fn per_unit(credits: impl Into<Credits>) -> Self {
        MeterRule {
            price: Price::PerUnit(credits.into()),
            cap: None,
        }
    }

    /// `credits` for each block of `units` units; a started block counts whole.
    /// `units` must be at least 1 (`build()` checks it).
    pub fn per_block(units: u64, credits: impl Into<Credits>) -> Self {
        MeterRule {
            price: Price::PerBlock {
                units,
                credits: credits.into(),
            },
            cap: None,
        }
    }

    /// Credits computed from the units by `f` (called once per request, at its end).
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(u64) -> Credits + Send + Sync + 'static,
    {
        MeterRule {
            price: Price::Custom(Arc::new(f)),
            cap: None,
        }
    }

    /// Reserve (and charge at most) `cap` credits per request instead of the plan's
    /// maximum; the plan still clamps it. Smaller reservations let a subscriber run
    /// more metered requests at once.
    pub fn capped_at(mut self, cap: impl Into<Credits>) -> Self {
        self.cap = Some(cap.into());
        self
    }

    /// The configured cap, if any.
    pub fn cap(&self) -> Option<Credits> {
        self.cap
    }

    /// Credits for `units` units, before the plan's clamp. Saturates instead of
    /// overflowing.
    pub fn credits(&self, units: u64) -> Credits {
        let (count, each) = match &self.price {
            Price::PerUnit(each) => (units, *each),
            Price::PerBlock {
                units: block,
                credits,
            } => (units.div_ceil((*block).max(1)), *credits),
            Price::Custom(f) => return f(units),
        };
        Credits::from(count)
            .checked_mul(each)
            .unwrap_or(Credits::MAX)
    }

    pub(crate) fn check(&self) -> Result<(), &'static str> {
        match (&self.price, self.cap) {
            (Price::PerBlock { units: 0, .. }, _) => Err("a block must be at least 1 unit"),
            (_, Some(cap)) if cap.is_zero() => {
                Err("the cap must be at least 1 (settle reads 0 as the plan maximum)")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for MeterRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MeterRule");
        match &self.price {
            Price::PerUnit(c) => d.field("per_unit", c),
            Price::PerBlock { units, credits } => {
                d.field("block_units", units).field("per_block", credits)
            }
            Price::Custom(_) => d.field("custom", &"Fn(u64) -> Credits"),
        };
        d.field("cap", &self.cap).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_price_units_and_saturate() {
        assert_eq!(MeterRule::per_unit(1u64).credits(0), Credits::ZERO);
        assert_eq!(
            MeterRule::per_block(3, 2u64).credits(3),
            Credits::from(2u64)
        );
        assert_eq!(
            MeterRule::per_block(3, 2u64).credits(4),
            Credits::from(4u64)
        );
        assert_eq!(MeterRule::per_unit(Credits::MAX).credits(2), Credits::MAX);
        assert!(MeterRule::per_block(0, 1u64).check().is_err());
        assert!(MeterRule::per_unit(1u64).capped_at(0u64).check().is_err());
        assert!(MeterRule::per_unit(1u64).capped_at(1u64).check().is_ok());
    }

    #[test]
    fn a_closed_meter_keeps_counting_but_says_so() {
        let meter = Meter::detached();
        meter.add(2);
        assert_eq!(meter.close(), 2);
        meter.add(5);
        assert!(meter.is_closed());
        assert_eq!(meter.units(), 7);
    }
}
