//! Counting executions where they happen: on the SSH host. Each execution appends
//! `<run id> <attempt> <unix time>` to a file (the executor passes `NETCRON_RUN_ID` and
//! `NETCRON_ATTEMPT`, which the test sshd accepts), and tests compare those lines with the run
//! history.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::app::TestApp;
use crate::support::pipeline::finished;

/// A file on the SSH host that every execution appends `<run id> <attempt> <unix time>` to,
/// the time read on the host as the command begins.
pub(crate) struct Executions {
    dir: PathBuf,
}

impl Executions {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("netcron-exec-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("executions dir");
        // The test user runs the commands.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self { dir }
    }

    /// The directory on the host (the test user may write in it).
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Shell text that records the execution, then does `then`.
    pub(crate) fn command(&self, then: &str) -> String {
        format!(
            "echo \"$NETCRON_RUN_ID $NETCRON_ATTEMPT $(date +%s.%N)\" >> {}/log; {then}",
            self.dir.display()
        )
    }

    /// Every execution so far, as (run id, attempt, when it began on the host).
    pub(crate) fn started(&self) -> Vec<(String, i64, chrono::DateTime<chrono::Utc>)> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let run = fields.next()?.to_owned();
                let attempt = fields.next()?.parse().ok()?;
                let at: f64 = fields.next()?.parse().ok()?;
                let at = chrono::DateTime::from_timestamp_micros((at * 1e6) as i64)?;
                Some((run, attempt, at))
            })
            .collect()
    }

    /// Every execution so far, as (run id, attempt).
    pub(crate) fn lines(&self) -> Vec<(String, i64)> {
        self.started()
            .into_iter()
            .map(|(run, attempt, _)| (run, attempt))
            .collect()
    }

    /// How many times each (run, attempt) executed.
    pub(crate) fn counts(&self) -> HashMap<(String, i64), usize> {
        let mut counts = HashMap::new();
        for line in self.lines() {
            *counts.entry(line).or_insert(0) += 1;
        }
        counts
    }

    pub(crate) async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.lines().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} executions within {within:?}, expected {n}",
                self.lines().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Executions {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts that each run executed exactly once, as attempt 1, and succeeded.
pub(crate) async fn assert_each_ran_once(app: &TestApp, runs: &[String], executions: &Executions) {
    let counts = executions.counts();
    assert_eq!(
        executions.lines().len(),
        runs.len(),
        "executions on the host: {counts:?}"
    );
    for run_id in runs {
        let run = finished(app, run_id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["attempt"], 1, "{run}");
        assert_eq!(counts.get(&(run_id.clone(), 1)), Some(&1), "{counts:?}");
    }
}
