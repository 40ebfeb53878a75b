//! [`Price`]: what one tool call costs, before the plan's clamp.

use std::fmt;
use std::sync::Arc;

use rmcp::model::{CallToolResult, JsonObject};

use crate::types::Credits;

type ArgumentsFn = dyn Fn(&JsonObject) -> Credits + Send + Sync;
type ResultFn = dyn Fn(&JsonObject, &CallToolResult) -> Credits + Send + Sync;

/// The price of a tool: a fixed number of credits, or a function of the call's
/// arguments, or of its arguments and its result.
///
/// The credits are reserved (and the token verified for them) before the tool runs,
/// so a price that depends on the result declares its most: the call is charged what
/// the function answers after the tool, never more than that most.
///
/// ```
/// use nvm_payments::mcp::Price;
/// use nvm_payments::Credits;
///
/// let fixed: Price = 2u64.into();
/// // One credit per city asked for.
/// let per_city = Price::from_arguments(|args| {
///     let cities = args.get("cities").and_then(|c| c.as_array()).map_or(1, |c| c.len());
///     Credits::from(cities as u64)
/// });
/// // Up to 10 credits: one per content block returned.
/// let per_block = Price::from_result(10u64, |_args, result| Credits::from(result.content.len() as u64));
/// # let _ = (fixed, per_city, per_block);
/// ```
#[derive(Clone)]
pub struct Price(pub(crate) PriceKind);

#[derive(Clone)]
pub(crate) enum PriceKind {
    Fixed(Credits),
    Arguments(Arc<ArgumentsFn>),
    Result {
        most: Credits,
        charge: Arc<ResultFn>,
    },
}

impl Price {
    /// A fixed number of credits per call.
    pub fn fixed(credits: impl Into<Credits>) -> Self {
        Price(PriceKind::Fixed(credits.into()))
    }

    /// Credits computed from the call's arguments (`{}` when it has none). Zero makes
    /// that call free: it is served without a token.
    pub fn from_arguments<F>(f: F) -> Self
    where
        F: Fn(&JsonObject) -> Credits + Send + Sync + 'static,
    {
        Price(PriceKind::Arguments(Arc::new(f)))
    }

    /// Credits computed from the arguments and the tool's result, at most `most`:
    /// `most` is reserved before the tool runs, the answer (clamped to `most`) is
    /// charged after it. Zero waives the charge of that call.
    pub fn from_result<F>(most: impl Into<Credits>, f: F) -> Self
    where
        F: Fn(&JsonObject, &CallToolResult) -> Credits + Send + Sync + 'static,
    {
        Price(PriceKind::Result {
            most: most.into(),
            charge: Arc::new(f),
        })
    }

    /// What is reserved (and verified) before the tool runs.
    pub(crate) fn before(&self, arguments: &JsonObject) -> Credits {
        match &self.0 {
            PriceKind::Fixed(c) => *c,
            PriceKind::Arguments(f) => f(arguments),
            PriceKind::Result { most, .. } => *most,
        }
    }

    /// What is charged once the tool succeeded (`None`: what was reserved).
    pub(crate) fn after(&self, arguments: &JsonObject, result: &CallToolResult) -> Option<Credits> {
        match &self.0 {
            PriceKind::Result { most, charge } => Some(charge(arguments, result).min(*most)),
            _ => None,
        }
    }

    /// Whether the arguments must be kept until the tool has answered.
    pub(crate) fn reads_result(&self) -> bool {
        matches!(self.0, PriceKind::Result { .. })
    }

    /// A fixed zero, or a zero most: a price that can never charge.
    pub(crate) fn is_never_charged(&self) -> bool {
        match &self.0 {
            PriceKind::Fixed(c) | PriceKind::Result { most: c, .. } => c.is_zero(),
            PriceKind::Arguments(_) => false,
        }
    }
}

impl From<u64> for Price {
    fn from(credits: u64) -> Self {
        Price::fixed(credits)
    }
}

impl From<Credits> for Price {
    fn from(credits: Credits) -> Self {
        Price::fixed(credits)
    }
}

impl fmt::Debug for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PriceKind::Fixed(c) => f.debug_tuple("Fixed").field(c).finish(),
            PriceKind::Arguments(_) => f.write_str("FromArguments"),
            PriceKind::Result { most, .. } => {
                f.debug_struct("FromResult").field("most", most).finish()
            }
        }
    }
}
