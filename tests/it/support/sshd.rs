//! A real OpenSSH `sshd` per test, plus small fake TCP servers for failure cases.
//!
//! `TestSshd::start()` runs `/usr/sbin/sshd` (package `openssh-server`) on a free loopback
//! port with its own host key and `authorized_keys` in a private temporary directory, logging
//! at `LogLevel VERBOSE` to a file that [`TestSshd::log`] returns. Logins are as [`TEST_USER`],
//! which is created on first use when the tests run as root (otherwise it must already exist;
//! `.ci/run` runs as root). Every instance is independent, so tests (and test processes) run
//! in parallel.
//!
//! The fake servers stay on loopback: [`Blackhole`] (connects time out), [`SilentServer`]
//! (accepts, never answers) and [`GarbageServer`] (answers with a non-SSH banner).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The account tests log in as.
pub const TEST_USER: &str = "netcron-test";
/// [`TEST_USER`]'s password (password and keyboard-interactive authentication).
pub const TEST_PASSWORD: &str = "Netcron-test-pw-1";
/// Passphrase of [`TestSshd::client_key_encrypted`].
pub const CLIENT_KEY_PASSPHRASE: &str = "key-passphrase-1";
/// What [`GarbageServer`] sends instead of an SSH banner.
pub const GARBAGE_BANNER: &str = "HTTP/1.1 400 Bad Request\r\n\r\n";

/// Substrings of sshd `LogLevel VERBOSE` lines that show a client got as far as
/// authentication (sent at least one `SSH_MSG_USERAUTH_REQUEST`, even the `none` method):
///
/// - `Accepted ` — `Accepted publickey|password|keyboard-interactive/pam for USER from ...`,
///   and `Accepted key ED25519 SHA256:... found at ...` while checking a public key;
/// - `Failed ` — `Failed publickey|password|keyboard-interactive/pam for USER from ...`;
/// - `Postponed ` — `Postponed publickey|keyboard-interactive for USER ...` (multi-step methods);
/// - `authenticating user` — `Connection closed by authenticating user USER ...` and
///   `Disconnected from authenticating user USER ...` (the client gave up mid-authentication,
///   e.g. after the `none` method or a refused key, which may leave no `Failed` line);
/// - `nvalid user` — `Invalid user X from ...`, `Connection closed by invalid user X ...`;
/// - `Disconnected from user` — the end of an authenticated connection.
///
/// A connection that never reaches authentication (port probe, banner read, key exchange
/// aborted because the host key did not match) logs only `Connection from ...` followed by
/// `Connection closed by 127.0.0.1 port N [preauth]`, `Connection reset by ...`,
/// `Received disconnect from ... [preauth]` or `Disconnected from 127.0.0.1 port N [preauth]`,
/// none of which contain a marker.
pub const AUTH_ATTEMPT_MARKERS: &[&str] = &[
    "Accepted ",
    "Failed ",
    "Postponed ",
    "authenticating user",
    "nvalid user",
    "Disconnected from user",
];

const SSHD: &str = "/usr/sbin/sshd";
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long sshd may take to listen and send its banner.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Variations of the sshd configuration.
#[derive(Debug, Default, Clone)]
pub struct SshdOptions {
    /// Offer only keyboard-interactive authentication (through PAM, answered with
    /// [`TEST_PASSWORD`]); neither `password` nor `publickey` is offered.
    pub keyboard_interactive_only: bool,
    /// `MaxStartups` (concurrent unauthenticated connections, no random early drop) and
    /// `MaxSessions`; the default is 100 of each.
    pub max_startups: Option<u32>,
    /// `ForceCommand`: every session runs this instead of what the client asked for (the
    /// request is in `$SSH_ORIGINAL_COMMAND`), to play a device that is not a Unix shell.
    pub force_command: Option<String>,
    /// `MaxSessions` alone (channels per connection), e.g. 1 for a device that refuses a
    /// second exec on one connection.
    pub max_sessions: Option<u32>,
    /// Use an RSA host key instead of ed25519 (for a legacy-only `ssh-rsa` server).
    pub rsa_host_key: bool,
    /// More `sshd_config` lines, appended as they are (e.g. `KexAlgorithms …`).
    pub extra_config: String,
    /// Run sshd inside this network namespace (`ip netns exec`): it listens on the
    /// namespace's own loopback, which no other namespace can reach.
    pub netns: Option<String>,
}

/// A running sshd; killed and its directory removed on drop.
pub struct TestSshd {
    /// Loopback port (`127.0.0.1`).
    pub port: u16,
    /// The host key's fingerprint as `ssh-keygen -lf` prints it: `SHA256:<base64, no padding>`.
    pub host_key_fingerprint: String,
    /// Authorized ed25519 private key, OpenSSH format, no passphrase.
    pub client_key: String,
    /// A second authorized ed25519 private key, encrypted with [`CLIENT_KEY_PASSPHRASE`].
    pub client_key_encrypted: String,
    /// A valid ed25519 private key that is NOT in `authorized_keys`.
    pub unauthorized_key: String,
    dir: PathBuf,
    child: Option<Child>,
    netns: Option<String>,
}

impl TestSshd {
    /// Password and public-key authentication (`UsePAM no`).
    pub fn start() -> TestSshd {
        TestSshd::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> TestSshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server and openssh-client (see .ci/run)"
        );
        ensure_test_user();
        // Privilege-separation directory; sshd explains itself if this fails (not root).
        let _ = fs::create_dir_all(PRIVSEP_DIR);

        let dir = make_temp_dir();
        let keys = ["host_ed25519", "client", "client_encrypted", "unauthorized"];
        let passphrases = ["", "", CLIENT_KEY_PASSPHRASE, ""];
        generate_keys(&dir, &keys, &passphrases);
        let host_key = if opts.rsa_host_key {
            generate_rsa_host_key(&dir);
            "host_rsa"
        } else {
            "host_ed25519"
        };

        let mut authorized = read(&dir.join("client.pub"));
        authorized.push_str(&read(&dir.join("client_encrypted.pub")));
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, authorized).expect("write authorized_keys");
        // sshd reads it as the test user (StrictModes no, but still needs read access).
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o644))
            .expect("chmod authorized_keys");

        let mut sshd = TestSshd {
            port: 0,
            host_key_fingerprint: fingerprint(&dir.join(format!("{host_key}.pub"))),
            client_key: read(&dir.join("client")),
            client_key_encrypted: read(&dir.join("client_encrypted")),
            unauthorized_key: read(&dir.join("unauthorized")),
            dir,
            child: None,
            netns: opts.netns.clone(),
        };

        // Another process may take the free port before sshd binds it: retry with a new one.
        let mut last_error = String::new();
        for attempt in 0..10 {
            sshd.port = free_port();
            write_config(&sshd.dir, sshd.port, &opts);
            if attempt == 0 {
                validate_config(&sshd.config_path());
            }
            match sshd.spawn() {
                Ok(child) => {
                    sshd.child = Some(child);
                    return sshd;
                }
                Err(SpawnError::PortInUse(log)) => last_error = log,
                Err(SpawnError::Other(message)) => panic!("{message}"),
            }
        }
        panic!("sshd could not bind a free port in 10 attempts; last log:\n{last_error}")
    }

    /// sshd's log so far (appended to across [`TestSshd::restart_with_new_host_key`]).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The log lines that show an authentication attempt (see [`AUTH_ATTEMPT_MARKERS`]).
    pub fn auth_attempts(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| {
                AUTH_ATTEMPT_MARKERS
                    .iter()
                    .any(|marker| line.contains(marker))
            })
            .map(str::to_owned)
            .collect()
    }

    /// Successful authentications so far (`Accepted publickey|password|keyboard-interactive`
    /// lines): one per SSH session logged in.
    pub fn logins(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| {
                [
                    "Accepted publickey",
                    "Accepted password",
                    "Accepted keyboard",
                ]
                .iter()
                .any(|m| line.contains(m))
            })
            .count()
    }

    /// Kills (SIGKILL) the processes serving the sessions open now, as a device dropping its
    /// VTY lines would; sshd itself keeps listening. Answers how many processes were killed.
    pub fn kill_sessions(&self) -> usize {
        let Some(master) = self.child.as_ref().map(Child::id) else {
            return 0;
        };
        let mut killed = 0;
        for pid in descendants(master) {
            let ok = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            killed += usize::from(ok);
        }
        killed
    }

    /// Kills sshd (SIGKILL): the port refuses connections afterwards. Sessions already
    /// authenticated run in their own processes and end when their client disconnects.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops sshd and the sessions it serves (a device replaced or reinstalled), generates a
    /// new host key and starts sshd again on the same port.
    pub fn restart_with_new_host_key(&mut self) {
        self.kill_sessions();
        self.stop();
        for name in ["host_ed25519", "host_ed25519.pub"] {
            let _ = fs::remove_file(self.dir.join(name));
        }
        generate_keys(&self.dir, &["host_ed25519"], &[""]);
        self.host_key_fingerprint = fingerprint(&self.dir.join("host_ed25519.pub"));
        // The port was free a moment ago; if something grabbed it meanwhile, wait for it.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(SpawnError::PortInUse(log)) if Instant::now() < deadline => {
                    let _ = log;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(SpawnError::PortInUse(log)) => {
                    panic!(
                        "port {} stayed in use after restart; log:\n{log}",
                        self.port
                    )
                }
                Err(SpawnError::Other(message)) => panic!("{message}"),
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// Starts sshd and waits until it listens on `self.port` and sends its banner.
    fn spawn(&self) -> Result<Child, SpawnError> {
        let log_path = self.dir.join("sshd.log");
        let log_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let stderr_path = self.dir.join("sshd.stderr");
        let stderr = fs::File::create(&stderr_path).expect("create sshd.stderr");
        // In a namespace, `ip netns exec` replaces itself with sshd: the child is sshd still.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        let mut child = command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.config_path())
            .arg("-E")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {SSHD}: {e}"));

        let listening = format!("Server listening on 127.0.0.1 port {}.", self.port);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let new_log = || {
                let log = self.log();
                log.get(usize::try_from(log_offset).unwrap_or(0)..)
                    .unwrap_or_default()
                    .to_owned()
            };
            if let Ok(Some(status)) = child.try_wait() {
                let log = new_log();
                let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                let details = format!("{log}{stderr}");
                return Err(if details.contains("Address already in use") {
                    SpawnError::PortInUse(details)
                } else {
                    SpawnError::Other(format!("sshd exited with {status}; output:\n{details}"))
                });
            }
            // A namespace's loopback cannot be reached from here to read the banner; the log
            // line says sshd listens there.
            let answers = self.netns.is_some() || sends_ssh_banner(self.port);
            if new_log().contains(&listening) && answers {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Other(format!(
                    "sshd did not answer on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    new_log()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum SpawnError {
    PortInUse(String),
    Other(String),
}

/// Every process below `root` (children, grandchildren, …), from `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| {
                    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    // The parent pid is the second field after the parenthesised name.
                    let after = stat.rsplit(')').next()?;
                    let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
                    Some((pid, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![root];
    let mut i = 0;
    while let Some(&parent) = found.get(i) {
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.retain(|p| *p != root);
    found
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// Creates [`TEST_USER`] with [`TEST_PASSWORD`] and `/bin/sh` when running as root; once per
/// process, tolerating other test processes doing the same at the same time.
fn ensure_test_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let uid = run(Command::new("id").arg("-u"));
        let is_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if !is_root {
            assert!(
                user_exists(),
                "user {TEST_USER} does not exist and the tests are not running as root: run \
                 .ci/run, or as root: useradd -m -s /bin/sh {TEST_USER} && \
                 echo '{TEST_USER}:{TEST_PASSWORD}' | chpasswd"
            );
            return;
        }
        // useradd/chpasswd fail while another process holds /etc/passwd or /etc/shadow
        // locked ("cannot lock ...; try again later"), so retry for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            let step = if !user_exists() {
                run(Command::new("useradd").args(["-m", "-s", "/bin/sh", TEST_USER]))
            } else if !has_usable_shell() {
                run(Command::new("usermod").args(["-s", "/bin/sh", TEST_USER]))
            } else {
                // Setting the same password again is harmless, and fixes a user left
                // without one (e.g. another process died between useradd and chpasswd).
                let mut child = Command::new("chpasswd")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn chpasswd");
                let mut stdin = child.stdin.take().expect("chpasswd stdin");
                writeln!(stdin, "{TEST_USER}:{TEST_PASSWORD}").expect("write to chpasswd");
                drop(stdin);
                let output = child.wait_with_output().expect("wait for chpasswd");
                if output.status.success() {
                    return;
                }
                output
            };
            if !step.status.success() {
                last = describe(&step);
            }
            assert!(
                Instant::now() < deadline,
                "could not set up user {TEST_USER}: {last}"
            );
            if !step.status.success() {
                thread::sleep(Duration::from_millis(50));
            }
        }
    });
}

fn user_exists() -> bool {
    run(Command::new("id").arg(TEST_USER)).status.success()
}

/// Whether [`TEST_USER`]'s login shell can run commands (not `nologin`/`false`).
fn has_usable_shell() -> bool {
    let entry = run(Command::new("getent").args(["passwd", TEST_USER]));
    let entry = String::from_utf8_lossy(&entry.stdout).into_owned();
    let shell = entry
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    !shell.is_empty() && !shell.ends_with("nologin") && !shell.ends_with("false")
}

/// A fresh directory that the test user can traverse (sshd reads `authorized_keys` as them).
fn make_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut base = std::env::temp_dir();
    let traversable = base
        .ancestors()
        .all(|dir| fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0));
    if !traversable {
        base = PathBuf::from("/tmp");
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("netcron-sshd-{}-{n}-{nanos}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .expect("chmod sshd temp dir");
                return dir;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// Generates ed25519 keys `dir/<name>` (mode 0600) and `dir/<name>.pub`, concurrently.
fn generate_keys(dir: &Path, names: &[&str], passphrases: &[&str]) {
    let children: Vec<(Command, Child)> = names
        .iter()
        .zip(passphrases)
        .map(|(name, passphrase)| {
            let mut command = Command::new("ssh-keygen");
            command
                .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
                .arg(dir.join(name))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("run ssh-keygen (install openssh-client): {e}"));
            (command, child)
        })
        .collect();
    for (command, child) in children {
        let output = child.wait_with_output().expect("wait for ssh-keygen");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            describe(&output)
        );
    }
}

/// An RSA host key `dir/host_rsa` (for servers that offer only `ssh-rsa`).
fn generate_rsa_host_key(dir: &Path) {
    let output = run(Command::new("ssh-keygen")
        .args([
            "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "host_rsa", "-f",
        ])
        .arg(dir.join("host_rsa")));
    assert!(
        output.status.success(),
        "ssh-keygen -t rsa: {}",
        describe(&output)
    );
}

/// `SHA256:...` of a public key file, as `ssh-keygen -lf` prints it.
fn fingerprint(public_key: &Path) -> String {
    let output = run(Command::new("ssh-keygen").arg("-lf").arg(public_key));
    assert!(
        output.status.success(),
        "ssh-keygen -lf: {}",
        describe(&output)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .filter(|field| field.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("unexpected ssh-keygen -lf output: {text}"))
        .to_owned()
}

/// Whether this sshd understands `PerSourcePenalties` (OpenSSH 9.8+). It must be off: failed
/// logins from 127.0.0.1 would otherwise make sshd refuse later connections from every test.
fn supports_per_source_penalties(dir: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let probe = dir.join("probe_config");
        let config = format!(
            "HostKey {}\nPerSourcePenalties no\n",
            dir.join("host_ed25519").display()
        );
        fs::write(&probe, config).expect("write probe config");
        let output = run(Command::new(SSHD).arg("-t").arg("-f").arg(&probe));
        let _ = fs::remove_file(&probe);
        !String::from_utf8_lossy(&output.stderr).contains("PerSourcePenalties")
    })
}

fn write_config(dir: &Path, port: u16, opts: &SshdOptions) {
    let path = |name: &str| dir.join(name).display().to_string();
    let limit = opts.max_startups.unwrap_or(100);
    let auth = if opts.keyboard_interactive_only {
        // OpenSSH implements keyboard-interactive on Linux only through PAM; the stock
        // /etc/pam.d/sshd (pam_unix against /etc/shadow) answers it.
        "UsePAM yes\n\
         KbdInteractiveAuthentication yes\n\
         PasswordAuthentication no\n\
         PubkeyAuthentication no\n\
         AuthenticationMethods keyboard-interactive\n"
    } else {
        "UsePAM no\n\
         KbdInteractiveAuthentication no\n\
         PasswordAuthentication yes\n\
         PubkeyAuthentication yes\n"
    };
    let mut penalties = if supports_per_source_penalties(dir) {
        "PerSourcePenalties no\n".to_owned()
    } else {
        String::new()
    };
    if let Some(command) = &opts.force_command {
        penalties.push_str(&format!("ForceCommand {command}\n"));
    }
    penalties.push_str(&opts.extra_config);
    let sessions = opts.max_sessions.unwrap_or(limit);
    let host_key = if opts.rsa_host_key {
        "host_rsa"
    } else {
        "host_ed25519"
    };
    let config = format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         StrictModes no\n\
         {auth}\
         PermitRootLogin no\n\
         PermitEmptyPasswords no\n\
         LogLevel VERBOSE\n\
         MaxStartups {limit}\n\
         MaxSessions {sessions}\n\
         MaxAuthTries 6\n\
         LoginGraceTime 60\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         AcceptEnv NETCRON_*\n\
         {penalties}",
        host_key = path(host_key),
        pid = path("sshd.pid"),
        authorized_keys = path("authorized_keys"),
    );
    fs::write(dir.join("sshd_config"), config).expect("write sshd_config");
}

fn validate_config(config: &Path) {
    let output = run(Command::new(SSHD).arg("-t").arg("-f").arg(config));
    assert!(
        output.status.success(),
        "invalid sshd config {}: {}\n{}",
        config.display(),
        String::from_utf8_lossy(&output.stderr),
        fs::read_to_string(config).unwrap_or_default()
    );
}

/// Whether something on `port` sends an `SSH-2.0-` banner within a few seconds.
fn sends_ssh_banner(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline && received.len() < 4096 {
        if stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
        {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if received.windows(8).any(|w| w == b"SSH-2.0-") {
                    return true;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    false
}

/// A loopback port whose accept queue is full: new SYNs are dropped, so a connect neither
/// succeeds nor is refused but times out (like an address that drops packets).
pub struct Blackhole {
    pub port: u16,
    _listener: socket2::Socket,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        use socket2::{Domain, Protocol, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .expect("create blackhole socket");
        listener
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind blackhole socket");
        // Backlog 0: Linux queues one connection, then drops SYNs while it is never accepted.
        listener.listen(0).expect("listen on blackhole socket");
        let addr = listener
            .local_addr()
            .expect("blackhole address")
            .as_socket()
            .expect("blackhole address is IP");
        let mut queued = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                    return Blackhole {
                        port: addr.port(),
                        _listener: listener,
                        _queued: queued,
                    };
                }
                Err(e) => panic!("filling the blackhole's accept queue: {e}"),
            }
        }
        panic!(
            "the blackhole's accept queue never filled ({} connections queued)",
            queued.len()
        )
    }
}

/// Runs `handle` for each connection accepted on a loopback port until dropped.
struct AcceptLoop {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptLoop {
    fn start(name: &str, mut handle: impl FnMut(TcpStream) + Send + 'static) -> AcceptLoop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind fake server");
        let port = listener.local_addr().expect("fake server address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(format!("{name}-{port}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        handle(stream);
                    }
                }
                // `handle` (and whatever connections it holds) is dropped here.
            })
            .expect("spawn fake server thread");
        AcceptLoop {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; if that fails, leave the thread detached.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// Accepts TCP connections and never sends anything (an SSH handshake that never starts).
/// Connections stay open until the server is dropped.
pub struct SilentServer {
    pub port: u16,
    _accept: AcceptLoop,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let mut held = Vec::new();
        let accept = AcceptLoop::start("silent-server", move |stream| held.push(stream));
        SilentServer {
            port: accept.port,
            _accept: accept,
        }
    }
}

/// Answers every connection with [`GARBAGE_BANNER`] instead of an SSH banner, then closes it.
pub struct GarbageServer {
    pub port: u16,
    _accept: AcceptLoop,
}

impl GarbageServer {
    pub fn start() -> GarbageServer {
        let accept = AcceptLoop::start("garbage-server", |mut stream| {
            thread::spawn(move || {
                let _ = stream.write_all(GARBAGE_BANNER.as_bytes());
                let _ = stream.shutdown(Shutdown::Write);
                // Read what the client sends until it closes, so closing does not reset the
                // connection (a reset could discard the banner before the client reads it).
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        });
        GarbageServer {
            port: accept.port,
            _accept: accept,
        }
    }
}

/// A TCP front that sends connections to two backends in turn: one device address behind
/// which two hosts with different host keys answer (a spoofed address, a failover pair that
/// does not share its keys).
pub(crate) async fn alternating_front(backends: [u16; 2]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut turn = 0usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backend = backends[turn % 2];
            turn += 1;
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to a new file in the server's directory, mode 0600 (as ssh requires).
    fn write_private(sshd: &TestSshd, name: &str, text: &str) -> PathBuf {
        let path = sshd.dir.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create private file");
        file.write_all(text.as_bytes()).expect("write private file");
        path
    }

    /// An `SSH_ASKPASS` program that prints `secret` (used for passwords and passphrases).
    fn askpass(sshd: &TestSshd, name: &str, secret: &str) -> PathBuf {
        let path = write_private(
            sshd,
            name,
            &format!("#!/bin/sh\nprintf '%s\\n' '{secret}'\n"),
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod askpass");
        path
    }

    /// Runs `ssh ... TEST_USER@127.0.0.1 command` with a clean configuration. `args` come
    /// first because ssh keeps the first value it sees for an option.
    fn ssh(sshd: &TestSshd, args: &[&str], askpass: Option<&Path>, command: &str) -> Output {
        let mut ssh = Command::new("ssh");
        ssh.args(args).env_remove("SSH_AUTH_SOCK");
        match askpass {
            Some(program) => {
                ssh.args(["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"])
                    .env("SSH_ASKPASS", program)
                    .env("SSH_ASKPASS_REQUIRE", "force");
            }
            None => {
                ssh.args(["-o", "BatchMode=yes"]);
            }
        }
        for option in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "ConnectTimeout=10",
            "IdentitiesOnly=yes",
        ] {
            ssh.args(["-o", option]);
        }
        ssh.args(["-F", "/dev/null", "-p", &sshd.port.to_string()])
            .arg(format!("{TEST_USER}@127.0.0.1"))
            .arg(command);
        run(&mut ssh)
    }

    fn key_args(key: &Path) -> Vec<String> {
        vec!["-i".into(), key.display().to_string()]
    }

    fn as_strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    const PASSWORD_ONLY: &[&str] = &[
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
    ];

    #[test]
    fn key_auth_runs_commands_and_is_logged() {
        let sshd = TestSshd::start();
        assert!(sshd.auth_attempts().is_empty(), "{}", sshd.log());
        let key = write_private(&sshd, "given-client", &sshd.client_key);
        let output = ssh(
            &sshd,
            &as_strs(&key_args(&key)),
            None,
            "hostname; printf ok; head -c 3 /dev/zero | wc -c; yes | head -n 2; sleep 0.01",
        );
        assert!(
            output.status.success(),
            "{}\n{}",
            describe(&output),
            sshd.log()
        );
        let hostname = run(&mut Command::new("hostname"));
        let expected = format!("{}ok3\ny\ny\n", String::from_utf8_lossy(&hostname.stdout));
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
        let log = sshd.log();
        assert!(
            log.contains(&format!("Accepted publickey for {TEST_USER}")),
            "{log}"
        );
        assert!(!sshd.auth_attempts().is_empty());

        let unauthorized = write_private(&sshd, "given-unauthorized", &sshd.unauthorized_key);
        let output = ssh(&sshd, &as_strs(&key_args(&unauthorized)), None, "true");
        assert!(!output.status.success(), "unauthorized key accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Permission denied"),
            "{}",
            describe(&output)
        );
    }

    #[test]
    fn password_auth_accepts_the_password_only() {
        let sshd = TestSshd::start();
        let right = askpass(&sshd, "askpass-right", TEST_PASSWORD);
        let output = ssh(&sshd, PASSWORD_ONLY, Some(&right), "printf ok");
        assert!(
            output.status.success(),
            "{}\n{}",
            describe(&output),
            sshd.log()
        );
        assert_eq!(output.stdout, b"ok");
        assert!(
            sshd.log()
                .contains(&format!("Accepted password for {TEST_USER}"))
        );

        let wrong = askpass(&sshd, "askpass-wrong", "not-the-password");
        let output = ssh(&sshd, PASSWORD_ONLY, Some(&wrong), "true");
        assert!(!output.status.success(), "wrong password accepted");
        assert!(
            sshd.log()
                .contains(&format!("Failed password for {TEST_USER}"))
        );
    }

    #[test]
    fn encrypted_key_needs_its_passphrase() {
        let sshd = TestSshd::start();
        assert!(
            sshd.client_key
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert_ne!(sshd.client_key, sshd.client_key_encrypted);
        let key = write_private(&sshd, "given-encrypted", &sshd.client_key_encrypted);

        let mut derive = Command::new("ssh-keygen");
        derive
            .args(["-y", "-P", "wrong-passphrase", "-f"])
            .arg(&key);
        assert!(
            !run(&mut derive).status.success(),
            "wrong passphrase decrypted the key"
        );

        let mut derive = Command::new("ssh-keygen");
        derive
            .args(["-y", "-P", CLIENT_KEY_PASSPHRASE, "-f"])
            .arg(&key);
        let output = run(&mut derive);
        assert!(output.status.success(), "{}", describe(&output));
        let public = String::from_utf8_lossy(&output.stdout).into_owned();
        let key_blob = public.split_whitespace().nth(1).expect("public key blob");
        assert!(read(&sshd.dir.join("authorized_keys")).contains(key_blob));

        let passphrase = askpass(&sshd, "askpass-passphrase", CLIENT_KEY_PASSPHRASE);
        let mut args = key_args(&key);
        args.extend(["-o", "PreferredAuthentications=publickey"].map(String::from));
        let output = ssh(&sshd, &as_strs(&args), Some(&passphrase), "printf ok");
        assert!(
            output.status.success(),
            "{}\n{}",
            describe(&output),
            sshd.log()
        );
        assert_eq!(output.stdout, b"ok");
    }

    #[test]
    fn keyboard_interactive_only_offers_nothing_else() {
        let sshd = TestSshd::start_with(SshdOptions {
            keyboard_interactive_only: true,
            ..SshdOptions::default()
        });
        let right = askpass(&sshd, "askpass-right", TEST_PASSWORD);
        let interactive = ["-o", "PreferredAuthentications=keyboard-interactive"];
        let output = ssh(&sshd, &interactive, Some(&right), "printf ok");
        assert!(
            output.status.success(),
            "{}\n{}",
            describe(&output),
            sshd.log()
        );
        assert_eq!(output.stdout, b"ok");
        let log = sshd.log();
        assert!(log.contains(&format!(
            "Accepted keyboard-interactive/pam for {TEST_USER}"
        )));

        let wrong = askpass(&sshd, "askpass-wrong", "not-the-password");
        let output = ssh(&sshd, &interactive, Some(&wrong), "true");
        assert!(!output.status.success(), "wrong password accepted");

        let output = ssh(&sshd, PASSWORD_ONLY, Some(&right), "true");
        assert!(!output.status.success(), "password method accepted");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            stderr.contains("Permission denied (keyboard-interactive)"),
            "{stderr}"
        );

        let key = write_private(&sshd, "given-client", &sshd.client_key);
        let output = ssh(&sshd, &as_strs(&key_args(&key)), None, "true");
        assert!(!output.status.success(), "publickey method accepted");
    }

    #[test]
    fn restart_changes_host_key_on_the_same_port() {
        let mut sshd = TestSshd::start_with(SshdOptions {
            max_startups: Some(50),
            ..SshdOptions::default()
        });
        let port = sshd.port;
        let first = sshd.host_key_fingerprint.clone();
        assert!(
            first.starts_with("SHA256:") && !first.ends_with('='),
            "{first}"
        );

        // The fingerprint is the one a client sees.
        let known_hosts = sshd.dir.join("known_hosts");
        let scan = run(Command::new("ssh-keyscan").args([
            "-t",
            "ed25519",
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ]));
        assert!(scan.status.success(), "{}", describe(&scan));
        fs::write(&known_hosts, &scan.stdout).expect("write known_hosts");
        assert_eq!(fingerprint(&known_hosts), first);

        sshd.restart_with_new_host_key();
        assert_eq!(sshd.port, port);
        assert_ne!(sshd.host_key_fingerprint, first);

        // A client that checks the old key stops before authenticating.
        let key = write_private(&sshd, "given-client", &sshd.client_key);
        let mut args = key_args(&key);
        let known = format!("UserKnownHostsFile={}", known_hosts.display());
        args.extend(["-o", "StrictHostKeyChecking=yes", "-o", &known].map(String::from));
        let output = ssh(&sshd, &as_strs(&args), None, "true");
        assert!(!output.status.success(), "old host key accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Host key verification failed"),
            "{}",
            describe(&output)
        );
        assert!(sshd.auth_attempts().is_empty(), "{}", sshd.log());

        let output = ssh(&sshd, &as_strs(&key_args(&key)), None, "printf ok");
        assert!(
            output.status.success(),
            "{}\n{}",
            describe(&output),
            sshd.log()
        );
        assert!(!sshd.auth_attempts().is_empty());

        sshd.stop();
        let refused = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(1),
        )
        .expect_err("stopped sshd still accepts connections");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    }

    #[test]
    fn blackhole_connect_times_out() {
        let blackhole = Blackhole::start();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, blackhole.port));
        for _ in 0..2 {
            let started = Instant::now();
            let error = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .expect_err("connected to the blackhole");
            assert!(
                matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
                "{error:?}"
            );
            assert!(started.elapsed() >= Duration::from_millis(450));
        }
    }

    #[test]
    fn silent_server_never_sends_a_banner() {
        let server = SilentServer::start();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect");
        stream.write_all(b"SSH-2.0-probe\r\n").expect("send banner");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("set read timeout");
        let mut buf = [0u8; 16];
        let error = stream.read(&mut buf).expect_err("silent server answered");
        assert!(
            matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{error:?}"
        );

        drop(server);
        let mut rest = Vec::new();
        // A close with our unread banner in its buffer is a reset rather than an EOF.
        let closed = stream.read_to_end(&mut rest);
        assert!(
            matches!(&closed, Ok(0))
                || matches!(&closed, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{closed:?}"
        );
    }

    #[test]
    fn garbage_server_sends_a_non_ssh_banner() {
        let server = GarbageServer::start();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
        for _ in 0..2 {
            let mut stream =
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect");
            stream.write_all(b"SSH-2.0-probe\r\n").expect("send banner");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("set read timeout");
            let mut received = String::new();
            stream
                .read_to_string(&mut received)
                .expect("read until closed");
            assert_eq!(received, GARBAGE_BANNER);
        }
        let ssh_port = free_port();
        assert_ne!(ssh_port, server.port);
    }
}
