//! What the tests share, apart from the tests themselves: the Postgres and Redis of the test
//! binary (`services`, and `containers` for a container engine's), the api role against its
//! own database (`app`), the roles around it and the calls that drive a run (`pipeline`), test
//! servers (`sshd`, `sentinel`), fake devices (`network`, `windows`, with `fixtures/`), the
//! ways the tests count what happened (`executions`), processes of the binary under test
//! (`executor_process`, `sites`) and a console session (`console`). Test modules import from
//! here and hold only tests.

pub(crate) mod app;
pub(crate) mod browser;
pub(crate) mod console;
pub(crate) mod containers;
pub(crate) mod executions;
pub(crate) mod executor_process;
pub(crate) mod network;
pub(crate) mod oidc;
pub(crate) mod pipeline;
pub(crate) mod sentinel;
pub(crate) mod services;
pub(crate) mod sites;
pub(crate) mod sshd;
pub(crate) mod windows;
