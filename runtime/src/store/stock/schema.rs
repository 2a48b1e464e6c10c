//! The stock database's schema, one migration per version (see
//! [`crate::store::db::open`], which applies them in order).

use crate::store::audit;

const SCHEMA_V1: &str = "
CREATE TABLE plan (
    id TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    source TEXT NOT NULL,
    row INTEGER NOT NULL,
    imported_at INTEGER NOT NULL,
    discarded INTEGER NOT NULL DEFAULT 0,
    rework INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX plan_by_day ON plan(day, model);
CREATE TABLE chains (
    chain_id INTEGER PRIMARY KEY,
    root_pem TEXT NOT NULL,
    issuing_pem TEXT NOT NULL,
    UNIQUE (root_pem, issuing_pem)
);
CREATE TABLE packs (
    pack_id INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    chain_id INTEGER NOT NULL REFERENCES chains(chain_id),
    sealed_key BLOB,
    state TEXT NOT NULL CHECK (state IN ('stocked', 'handed_out', 'received', 'written',
        'flagged', 'deleted', 'revoked', 'discarded', 'quarantined')),
    replaces TEXT,
    stocked_at INTEGER NOT NULL,
    line TEXT,
    taken_at INTEGER,
    due_at INTEGER,
    received_at INTEGER,
    written_at INTEGER,
    readback TEXT,
    retained_at INTEGER,
    ended_at INTEGER,
    end_reason TEXT
);
CREATE UNIQUE INDEX one_live_pack_per_id ON packs(id)
    WHERE state IN ('stocked', 'handed_out', 'received', 'written', 'flagged', 'deleted');
CREATE INDEX packs_by_state ON packs(state, model);
CREATE INDEX packs_by_id ON packs(id);
CREATE TABLE ca_queue (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('replace', 'revoke')),
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    reason TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try_at INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX one_queue_item_per_serial ON ca_queue(serial);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    phc TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
";

/// Keys born in the device: a pack whose certificate was signed for a key
/// the device generated (its CSR) never has a sealed key, and its failure
/// is revoked, not replaced ahead (the device's next CSR is the replacement).
const SCHEMA_V2: &str = "
ALTER TABLE packs ADD COLUMN device_key INTEGER NOT NULL DEFAULT 0;
";

/// `migrations()[i]` moves the schema from version i to i+1.
pub fn migrations() -> Vec<&'static str> {
    vec![audit::SCHEMA, SCHEMA_V1, SCHEMA_V2]
}
