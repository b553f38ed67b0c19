//! sea-orm entities, one module per table. They mirror the schema that `netcron-migration`
//! creates; they never travel on a stream or through the API as they are.

pub mod command;
pub mod config_version;
pub mod credential;
pub mod device;
pub mod run;
pub mod schedule;
