//! Support for `marketsync test`: a consultant's `tests:` beside each mapping, and fixture
//! deliveries checked against reviewed snapshots.

pub mod cases;
pub mod fixtures;
pub mod snapshot;
