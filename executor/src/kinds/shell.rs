//! `shell`: the command text on the device, as one exec or line by line in its CLI; the
//! outcome is the last attempt's (an interactive session's lines in `payload.lines`).

use netcron_protocol::{Outcome, Task};

use crate::attempts::{Attempts, Work};
use crate::cli::Driver;
use crate::outcome::build_outcome;

pub(crate) async fn run_shell(
    task: &Task,
    text: String,
    driver: &'static Driver,
    mut attempts: Attempts<'_>,
) -> Outcome {
    let clock = attempts.clock();
    let work = Work::for_driver(driver, text);
    attempts
        .connection(task, work, Vec::new(), move |last, records, scrubber| {
            build_outcome(last, records, clock, scrubber)
        })
        .await
}
