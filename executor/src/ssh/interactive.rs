//! Interactive CLI sessions: a PTY shell driven like a person at the device's prompt.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::secret::SecretString;
use ssh2::{Channel, Session};

use super::terms::{Attempt, CliLine, Discard, Failure, Limits};
use super::wait::{Step, Waiter};
use crate::cli::{self, Driver};
use crate::output::Scrubber;

/// A shell kept between runs of a pooled session: its channel, the prompt pattern learned at
/// login and the base prompt (after setup and enable) that the next run must find again.
pub(super) struct Shell {
    pub(super) channel: Channel,
    prompt: regex::Regex,
    base: String,
}

/// How long bringing a pooled shell back to its prompt may take before the session is given up
/// for a fresh one (a live device answers a newline at once).
const RESUME_TIMEOUT: Duration = Duration::from_secs(5);

/// An interactive CLI on a PTY shell channel: the prompt learned after login, the driver's
/// setup lines sent, enable mode entered when there is a secret, then each line typed in turn.
pub(super) struct CliSession<'s> {
    channel: Channel,
    waiter: &'s Waiter,
    driver: &'static Driver,
    /// Every text the device sends back goes through it before it leaves the session.
    scrubber: &'s Scrubber<'s>,
    deadline: Instant,
    timeout: Duration,
    cap: usize,
    prompt: Option<regex::Regex>,
    /// The last prompt seen (to tell `>` from `#`).
    current: String,
    /// What the command being read printed so far, kept for a timeout.
    partial: Collected,
    /// The prompt after setup and enable: where every run starts.
    base: String,
}

/// The bytes a command printed, up to the cap.
#[derive(Default)]
struct Collected {
    kept: Vec<u8>,
    truncated: bool,
}

impl<'s> CliSession<'s> {
    pub(super) fn open(
        session: &Session,
        waiter: &'s Waiter,
        driver: &'static Driver,
        scrubber: &'s Scrubber<'s>,
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
            scrubber,
            deadline,
            timeout: limits.command_timeout,
            cap: limits.max_output_bytes,
            prompt: None,
            current: String::new(),
            partial: Collected::default(),
            base: String::new(),
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
            cli.keep_partial(attempt);
            return Err(failure);
        }
        cli.send("\n")?;
        let answer = cli.read_until(|_, l| cli::looks_like_prompt(l), false)?;
        let text = cli::clean(&answer.kept);
        let learned = cli::last_line(&text).to_owned();
        cli.prompt = Some(cli::prompt_pattern(&learned).ok_or_else(|| {
            // Scrubbed before `{:?}` escapes it beyond recognition.
            Failure::new(
                ErrorKind::InvalidOutput,
                format!(
                    "cannot recognise the device's prompt in {:?}",
                    scrubber.scrub(&learned)
                ),
            )
        })?);
        cli.current = learned;
        for line in driver.setup {
            cli.command(line)?;
        }
        cli.base.clone_from(&cli.current);
        Ok(cli)
    }

    /// Takes up a pooled shell for the next run: whatever the device printed while it was idle
    /// is dropped (it belongs to no run), then a newline must come back as the base prompt —
    /// after the driver's command to leave a configuration mode, if the shell is in one. `Err`
    /// says why the shell cannot be used; nothing of the run has been sent then.
    pub(super) fn resume(
        shell: Shell,
        waiter: &'s Waiter,
        driver: &'static Driver,
        scrubber: &'s Scrubber<'s>,
        limits: Limits,
    ) -> Result<Self, Discard> {
        let mut cli = Self {
            channel: shell.channel,
            waiter,
            driver,
            scrubber,
            deadline: Instant::now() + RESUME_TIMEOUT.min(limits.command_timeout),
            timeout: limits.command_timeout,
            cap: limits.max_output_bytes,
            prompt: Some(shell.prompt),
            current: String::new(),
            partial: Collected::default(),
            base: shell.base,
        };
        let mut left_mode = false;
        // A device may print something of its own (a log message) right after a prompt, so a
        // prompt counts only when nothing follows it; a few tries, then the session is given up.
        for _ in 0..3 {
            if cli.drain_pending()? {
                continue;
            }
            cli.send("\n").map_err(|_| Discard::Dead)?;
            cli.command_probe()?;
            if cli.drain_pending()? {
                continue;
            }
            if cli.current.trim() == cli.base.trim() {
                cli.deadline = Instant::now() + limits.command_timeout;
                return Ok(cli);
            }
            match driver.leave_mode {
                Some(command) if !left_mode => {
                    left_mode = true;
                    cli.send(&format!("{command}\n"))
                        .map_err(|_| Discard::Dead)?;
                    cli.command_probe()?;
                }
                _ => return Err(Discard::Prompt),
            }
        }
        Err(Discard::Prompt)
    }

    /// Reads up to the next prompt during [`CliSession::resume`].
    fn command_probe(&mut self) -> Result<(), Discard> {
        let prompt = self.prompt.clone();
        match self.read_until(
            move |_, l| prompt.as_ref().is_some_and(|p| p.is_match(l)),
            true,
        ) {
            Ok(_) => Ok(()),
            Err(_) => Err(Discard::Dead),
        }
    }

    /// Reads whatever the device has sent without waiting; answers whether there was any.
    /// A closed channel or a broken session is `Dead`.
    fn drain_pending(&mut self) -> Result<bool, Discard> {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            match self.channel.read(&mut buf) {
                Ok(0) if self.channel.eof() => return Err(Discard::Dead),
                Ok(0) => return Ok(any),
                Ok(_) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(any),
                Err(_) => return Err(Discard::Dead),
            }
        }
    }

    /// The shell, to keep for the next run; `None` when no prompt was ever learned.
    pub(super) fn into_shell(self) -> Option<Shell> {
        Some(Shell {
            channel: self.channel,
            prompt: self.prompt?,
            base: self.base,
        })
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
        // Enabled or not, this is the prompt the next run on this shell must find.
        self.base.clone_from(&self.current);
        let mut done = Vec::new();
        attempt.status = RunStatus::Succeeded;
        for line in lines {
            let collected = match self.command(line) {
                Ok(c) => c,
                Err(failure) => {
                    self.keep_partial(attempt);
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
        // The shell stays open: the connection either goes to the pool or is closed (with an
        // `exit` first) by its owner.
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
                    self.scrubber.scrub(self.current.trim())
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

    /// A command's output as sent back: scrubbed, echo and prompt removed.
    fn output_of(&self, line: &str, collected: &Collected) -> String {
        let text = self.text_of(collected);
        match &self.prompt {
            // The echo is compared scrubbed, as the text now is.
            Some(prompt) => cli::strip_echo_and_prompt(&text, &self.scrubber.scrub(line), prompt),
            None => text,
        }
    }

    /// Collected bytes as text without terminal control, scrubbed; when the cap cut them, a
    /// trailing beginning of a secret goes too (its rest was past the cap).
    fn text_of(&self, collected: &Collected) -> String {
        let text = cli::clean(&collected.kept);
        if collected.truncated {
            self.scrubber.scrub_cut(&text)
        } else {
            self.scrubber.scrub(&text)
        }
    }

    /// Keeps what the interrupted read collected as the attempt's output.
    fn keep_partial(&self, attempt: &mut Attempt) {
        attempt.stdout.push(self.text_of(&self.partial).as_bytes());
        attempt.stdout.truncated |= self.partial.truncated;
    }

    fn send(&mut self, text: &str) -> Result<(), Failure> {
        let mut data = text.as_bytes();
        while !data.is_empty() {
            match self.channel.write(data) {
                Ok(n) => data = data.get(n..).unwrap_or_default(),
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
        self.partial = Collected::default();
        loop {
            match self.channel.read(&mut buf) {
                Ok(0) => {
                    if self.channel.eof() {
                        self.partial = Collected { kept, truncated };
                        return Err(Failure::new(
                            ErrorKind::InvalidOutput,
                            "the device closed the session before showing its prompt",
                        ));
                    }
                    self.wait_or_expire(&kept, truncated)?;
                }
                Ok(n) => {
                    let data = buf.get(..n).unwrap_or_default();
                    let room = self.cap.saturating_sub(kept.len());
                    kept.extend_from_slice(data.get(..room).unwrap_or(data));
                    if n > room {
                        truncated = true;
                    }
                    // The tail, always complete, is where prompts and pagers are looked for.
                    tail.extend_from_slice(data);
                    if tail.len() > 4096 {
                        tail.drain(..tail.len().saturating_sub(2048));
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
                    self.wait_or_expire(&kept, truncated)?;
                }
                Err(e) => {
                    self.partial = Collected { kept, truncated };
                    return Err(Failure::new(
                        ErrorKind::Internal,
                        format!("reading from the device: {e}"),
                    ));
                }
            }
        }
    }

    fn wait_or_expire(&mut self, kept: &[u8], truncated: bool) -> Result<(), Failure> {
        if self.waiter.wait(self.deadline).is_err() {
            self.partial = Collected {
                kept: kept.to_vec(),
                truncated,
            };
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
