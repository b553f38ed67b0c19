//! `netcron executor` as a process of its own (the binary under test), which a test can
//! freeze, resume or run with a skewed wall clock.

use std::path::PathBuf;
use std::process::{Child, Command};

use crate::support::app::TestApp;

/// `netcron executor` as its own process, so it can be frozen with SIGSTOP.
pub(crate) struct ExecutorProcess(Child);

impl ExecutorProcess {
    /// Starts `netcron executor`; with `skew` (libfaketime's `FAKETIME`, e.g. `-5m`) its wall
    /// clock is shifted by preloading libfaketime into the process itself, so the child is the
    /// executor and nothing outlives the test.
    pub(crate) fn start(app: &TestApp, skew: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netcron"));
        command
            .arg("executor")
            .env("REDIS_URL", &app.redis_url)
            .env("NETCRON_STREAM_PREFIX", &app.stream_prefix)
            .env("NETCRON_SECRET_KEY", &app.key_text)
            .env("NETCRON_LEASE_TTL_S", "2")
            .env("NETCRON_EXECUTOR_RECLAIM_IDLE_S", "4")
            .env("NETCRON_EXECUTOR_OPS_ADDR", "off")
            .env("NETCRON_LOG", "warn")
            // Never the test harness's own pipes: a process holding them keeps its reader
            // (CI's `tee`) waiting.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(skew) = skew {
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", skew)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        Self(command.spawn().expect("netcron executor"))
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }
}

/// Debian's multi-threaded libfaketime (package `faketime`, which `.ci/run` installs).
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists())
        .expect("libfaketime is missing: apt-get install faketime (see .ci/run)")
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
