//! The traffic inventory: who talked to what, as the server decided it. Learn mode is built on it: the
//! server counts every check under its flow key ([`inventory`]), serves and saves the counts as a
//! versioned JSON document ([`document`]), and `egress-authz suggest` turns such documents into a rule
//! file.
//!
//! The inventory says which workload reaches which host: it is as sensitive as an access log, so it is
//! served only on the admin port and can be turned off (`--traffic-max-entries 0`).

pub mod document;
pub mod inventory;
pub mod persist;

pub use document::{
    FORMAT, FlowEntry, InventoryDocument, InventoryError, NO_CALLER, NO_HOST, VERSION,
};
pub use inventory::TrafficInventory;
