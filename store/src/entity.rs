//! sea-orm entities, one module per table. They mirror the schema that `netcron-migration`
//! creates; they never travel on a stream or through the API as they are. Their text-backed
//! enum columns are [`netcron_common::stored::Stored`], so a row holding a value from a newer version
//! still reads.

pub mod command;
pub mod config_version;
pub mod credential;
pub mod device;
pub mod job_run;
pub mod run;
pub mod schedule;
