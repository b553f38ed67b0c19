//! Interactive CLI sessions: a PTY shell driven like a person at the device's prompt.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::secret::SecretString;
use ssh2::{Channel, Session};

use super::{Attempt, CliLine, Failure, Limits, Step, Waiter};
use crate::cli::{self, Driver};

/// An interactive CLI on a PTY shell channel: the prompt learned after login, the driver's
/// setup lines sent, enable mode entered when there is a secret, then each line typed in turn.
pub(super) struct CliSession<'s> {
    channel: Channel,
    waiter: &'s Waiter,
    driver: &'static Driver,
    deadline: Instant,
    timeout: Duration,
    cap: usize,
    prompt: Option<regex::Regex>,
    /// The last prompt seen (to tell `>` from `#`).
    current: String,
    /// What the command being read printed so far, kept for a timeout.
    partial: Vec<u8>,
}

/// The bytes a command printed, up to the cap.
struct Collected {
    kept: Vec<u8>,
    truncated: bool,
}

impl<'s> CliSession<'s> {
    pub(super) fn open(
        session: &Session,
        waiter: &'s Waiter,
        driver: &'static Driver,
        limits: Limits,
        attempt: &mut Attempt,
    ) -> Result<Self, Failure> {
        let deadline = Instant::now() + limits.command_timeout;
        let mut cli = Self {
            channel: waiter
                .retry(deadline, || session.channel_session())
                .map_err(|e| {
                    step_failure(e, "opening a session channel", limits.command_timeout)
                })?,
            waiter,
            driver,
            deadline,
            timeout: limits.command_timeout,
            cap: limits.max_output_bytes,
            prompt: None,
            current: String::new(),
            partial: Vec::new(),
        };
        let channel = &mut cli.channel;
        // A wide terminal, so devices do not wrap long lines themselves.
        waiter
            .retry(deadline, || {
                channel.request_pty("vt100", None, Some((511, 24, 0, 0)))
            })
            .map_err(|e| step_failure(e, "requesting a terminal", limits.command_timeout))?;
        waiter
            .retry(deadline, || channel.shell())
            .map_err(|e| step_failure(e, "starting the shell", limits.command_timeout))?;

        // Whatever the device prints first (banners), up to something that looks like a
        // prompt; then a newline, whose answer ends with the prompt alone.
        let banner = cli.read_until(|_, l| cli::looks_like_prompt(l), true);
        if let Err(failure) = banner {
            attempt.stdout.push(cli::clean(&cli.partial).as_bytes());
            return Err(failure);
        }
        cli.send("\n")?;
        let answer = cli.read_until(|_, l| cli::looks_like_prompt(l), false)?;
        let text = cli::clean(&answer.kept);
        let learned = cli::last_line(&text).to_owned();
        cli.prompt = Some(cli::prompt_pattern(&learned).ok_or_else(|| {
            Failure::new(
                ErrorKind::InvalidOutput,
                format!("cannot recognise the device's prompt in {learned:?}"),
            )
        })?);
        cli.current = learned;
        for line in driver.setup {
            cli.command(line)?;
        }
        Ok(cli)
    }

    pub(super) fn run(
        &mut self,
        lines: &[String],
        enable_secret: Option<&SecretString>,
        attempt: &mut Attempt,
    ) -> Result<(), Failure> {
        if let (Some(command), Some(secret)) = (self.driver.enable_command, enable_secret) {
            self.enable(command, secret)?;
        }
        let mut done = Vec::new();
        attempt.status = RunStatus::Succeeded;
        for line in lines {
            let collected = match self.command(line) {
                Ok(c) => c,
                Err(failure) => {
                    attempt.stdout.push(cli::clean(&self.partial).as_bytes());
                    attempt.lines = Some(done);
                    return Err(failure);
                }
            };
            let output = self.output_of(line, &collected);
            attempt.stdout.push(output.as_bytes());
            attempt.stdout.truncated |= collected.truncated;
            let error = self.driver.error_line(&output).map(str::to_owned);
            done.push(CliLine {
                command: line.clone(),
                output,
                failed: error.is_some(),
            });
            if let Some(error) = error {
                // Later lines may depend on this one (configuration), so they do not run.
                attempt.status = RunStatus::Failed;
                attempt.error_message = Some(format!("`{line}` failed on the device: {error}"));
                break;
            }
        }
        attempt.lines = Some(done);
        // Leave the CLI politely; the connection is closed right after in any case.
        let _ = self.channel.write(b"exit\n");
        Ok(())
    }

    /// `enable`, answered with the secret, unless the session is privileged already.
    fn enable(&mut self, command: &str, secret: &SecretString) -> Result<(), Failure> {
        if self.current.trim_end().ends_with('#') {
            return Ok(());
        }
        let asks_password = |l: &str| l.trim_end().to_ascii_lowercase().ends_with("password:");
        self.send(&format!("{command}\n"))?;
        let prompt = self.prompt.clone();
        let is_prompt = move |l: &str| prompt.as_ref().is_some_and(|p| p.is_match(l));
        self.read_until(|_, l| is_prompt(l) || asks_password(l), false)?;
        if asks_password(&self.current) {
            self.send(&format!("{}\n", secret.expose()))?;
            self.read_until(|_, l| is_prompt(l) || asks_password(l), false)?;
        }
        if !self.current.trim_end().ends_with('#') {
            return Err(Failure::new(
                ErrorKind::AuthFailed,
                format!(
                    "enable mode was refused (the prompt is still {:?}): check the \
                     credential's enable_secret",
                    self.current.trim()
                ),
            ));
        }
        Ok(())
    }

    /// Types `line` and reads up to the next prompt, answering pagers.
    fn command(&mut self, line: &str) -> Result<Collected, Failure> {
        self.send(&format!("{line}\n"))?;
        let prompt = self.prompt.clone();
        self.read_until(
            move |_, l| prompt.as_ref().is_some_and(|p| p.is_match(l)),
            true,
        )
    }

    fn output_of(&self, line: &str, collected: &Collected) -> String {
        let text = cli::clean(&collected.kept);
        match &self.prompt {
            Some(prompt) => cli::strip_echo_and_prompt(&text, line, prompt),
            None => text,
        }
    }

    fn send(&mut self, text: &str) -> Result<(), Failure> {
        let mut data = text.as_bytes();
        while !data.is_empty() {
            match self.channel.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.waiter
                        .wait(self.deadline)
                        .map_err(|_| timed_out(self.timeout))?;
                }
                Err(e) => {
                    return Err(Failure::new(
                        ErrorKind::Internal,
                        format!("writing to the device: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads until the last unterminated line satisfies `done` (given the text so far and
    /// that line); a pager prompt is answered with a space and dropped from the output.
    fn read_until(
        &mut self,
        done: impl Fn(&str, &str) -> bool,
        pager: bool,
    ) -> Result<Collected, Failure> {
        let mut kept: Vec<u8> = Vec::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut truncated = false;
        let mut buf = vec![0u8; 32 * 1024];
        self.partial.clear();
        loop {
            match self.channel.read(&mut buf) {
                Ok(0) => {
                    if self.channel.eof() {
                        self.partial = kept;
                        return Err(Failure::new(
                            ErrorKind::InvalidOutput,
                            "the device closed the session before showing its prompt",
                        ));
                    }
                    self.wait_or_expire(&kept)?;
                }
                Ok(n) => {
                    let data = &buf[..n];
                    let room = self.cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..n.min(room)]);
                    if n > room {
                        truncated = true;
                    }
                    // The tail, always complete, is where prompts and pagers are looked for.
                    tail.extend_from_slice(data);
                    if tail.len() > 4096 {
                        tail.drain(..tail.len() - 2048);
                    }
                    let text = cli::clean(&tail);
                    let last = cli::last_line(&text).to_owned();
                    if pager && self.driver.is_pager(&last) {
                        if !truncated {
                            let cut = kept.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                            kept.truncate(cut);
                        }
                        tail.clear();
                        self.send(" ")?;
                        continue;
                    }
                    if done(&text, &last) {
                        self.current = last;
                        return Ok(Collected { kept, truncated });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wait_or_expire(&kept)?;
                }
                Err(e) => {
                    self.partial = kept;
                    return Err(Failure::new(
                        ErrorKind::Internal,
                        format!("reading from the device: {e}"),
                    ));
                }
            }
        }
    }

    fn wait_or_expire(&mut self, kept: &[u8]) -> Result<(), Failure> {
        if self.waiter.wait(self.deadline).is_err() {
            self.partial = kept.to_vec();
            let _ = self.channel.close();
            return Err(timed_out(self.timeout));
        }
        Ok(())
    }
}

fn timed_out(timeout: Duration) -> Failure {
    Failure::new(
        ErrorKind::Timeout,
        format!(
            "the command did not finish within its timeout of {} s; the output so far is kept",
            timeout.as_secs()
        ),
    )
}

fn step_failure(e: Step, what: &str, timeout: Duration) -> Failure {
    match e {
        Step::Expired => timed_out(timeout),
        Step::Ssh(e) => Failure::new(ErrorKind::Internal, format!("{what}: {}", e.message())),
    }
}
