//! The one integration-test binary. Every test starts the real API on port 0 against its own
//! freshly migrated Postgres database (and its own stream prefix), so tests run in parallel.

mod ahead;
mod auth;
mod bulk;
mod commands;
mod console;
mod credentials;
mod devices;
mod docs;
mod edges;
mod embedded;
mod executor;
mod health;
mod hostile;
mod inventory;
mod jobs;
mod lifecycle;
mod live;
mod names;
mod network;
mod operations;
mod partial;
mod pgfailover;
mod reuse;
mod runs;
mod scheduler;
mod schedules;
mod security;
mod sentinel;
mod sign_in;
mod sites;
mod slots;
mod support;
mod text_safety;
mod tolerant;
mod zones;
