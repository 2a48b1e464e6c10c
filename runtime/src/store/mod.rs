//! The storage primitive: SQLite files opened the one safe way, with migrations.
pub mod audit;
pub mod db;
pub mod ledger;
pub mod pg;
pub mod stock;
