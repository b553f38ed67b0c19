//! Logging in on an open stream: TCP connect, the handshake with the device's algorithm
//! preferences, the host-key check (and first contact's pin), then authentication, all within
//! the login timeout.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use netcron_common::domain::ErrorKind;
use netcron_common::secret::SecretString;
use ssh2::{HashType, KeyboardInteractivePrompt, MethodType, Prompt, Session};

use super::terms::{Auth, Failure, Limits, Target};
use super::wait::{Step, Waiter};

/// Modern algorithms, strongest first; libssh2 drops names it does not implement.
const KEX_MODERN: &str = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,\
ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group16-sha512,\
diffie-hellman-group18-sha512,diffie-hellman-group14-sha256,\
diffie-hellman-group-exchange-sha256";
const KEX_LEGACY: &str =
    "diffie-hellman-group14-sha1,diffie-hellman-group1-sha1,diffie-hellman-group-exchange-sha1";
const HOSTKEY_MODERN: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256";
const HOSTKEY_LEGACY: &str = "ssh-rsa,ssh-dss";
const CIPHER_MODERN: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";
const CIPHER_LEGACY: &str = "aes128-cbc,aes192-cbc,aes256-cbc,3des-cbc";
const MAC_MODERN: &str = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,\
hmac-sha2-256,hmac-sha2-512";
const MAC_LEGACY: &str = "hmac-sha1,hmac-sha1-96";

/// Handshake (with the algorithm preferences), host-key check and authentication on an open
/// stream, within the login timeout. `fingerprint` gets the key the server presented.
pub(super) fn login<S: AsRawFd + AsFd + 'static>(
    stream: S,
    target: &Target<'_>,
    limits: Limits,
    fingerprint: &mut Option<String>,
) -> Result<(Session, Waiter), Failure> {
    let socket: OwnedFd = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("cloning the socket: {e}")))?;
    let mut session = Session::new()
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("starting libssh2: {e}")))?;
    set_algorithms(&session, target.legacy_algorithms)?;
    session.set_tcp_stream(stream);
    session.set_blocking(false);
    let waiter = Waiter {
        session: session.clone(),
        socket,
    };

    let login_deadline = Instant::now() + limits.login_timeout;
    waiter
        .retry(login_deadline, || session.handshake())
        .map_err(|e| match e {
            Step::Expired => Failure::new(
                ErrorKind::HandshakeFailed,
                format!(
                    "the server did not complete the SSH handshake within {} s",
                    limits.login_timeout.as_secs_f32()
                ),
            ),
            Step::Ssh(e) => handshake_failure(&e, target.legacy_algorithms),
        })?;

    let seen = session
        .host_key_hash(HashType::Sha256)
        .map(|hash| format!("SHA256:{}", STANDARD_NO_PAD.encode(hash)))
        .ok_or_else(|| Failure::new(ErrorKind::HandshakeFailed, "the server sent no host key"))?;
    *fingerprint = Some(seen.clone());
    if target.pinned_host_key.is_none()
        && let Some(pin) = target.first_contact
    {
        // Nothing secret has been sent yet: the first key is pinned before authentication, so
        // two runs racing to a new device cannot both trust what they see.
        pin(&seen).map_err(|(kind, message)| Failure::new(kind, message))?;
    }
    if let Some(pinned) = target.pinned_host_key
        && pinned != seen
    {
        // Nothing secret has been sent yet: authentication comes after this check.
        return Err(Failure::new(
            ErrorKind::HostKeyMismatch,
            format!(
                "the device presented host key {seen} but {pinned} is pinned; no \
                 credential was sent. If the key changed legitimately, re-pin it on the device"
            ),
        ));
    }

    authenticate(&session, &waiter, target, login_deadline)?;
    Ok((session, waiter))
}

/// Modern key exchange, host-key, cipher and MAC algorithms; the legacy ones appended (so still
/// last in preference) only for devices that opted in. (SHA-1 key exchange and HMAC-SHA1 exist
/// and the legacy host keys exist in libssh2 only because `.cargo/config.toml` compiles them
/// in.)
fn set_algorithms(session: &Session, legacy: bool) -> Result<(), Failure> {
    let list = |modern: &str, old: &str| {
        if legacy {
            format!("{modern},{old}")
        } else {
            modern.to_owned()
        }
    };
    let prefs = [
        (MethodType::Kex, list(KEX_MODERN, KEX_LEGACY)),
        (MethodType::HostKey, list(HOSTKEY_MODERN, HOSTKEY_LEGACY)),
        (MethodType::CryptCs, list(CIPHER_MODERN, CIPHER_LEGACY)),
        (MethodType::CryptSc, list(CIPHER_MODERN, CIPHER_LEGACY)),
        (MethodType::MacCs, list(MAC_MODERN, MAC_LEGACY)),
        (MethodType::MacSc, list(MAC_MODERN, MAC_LEGACY)),
    ];
    for (method, names) in prefs {
        session.method_pref(method, &names).map_err(|e| {
            Failure::new(
                ErrorKind::Internal,
                format!("setting SSH algorithms {names}: {}", e.message()),
            )
        })?;
    }
    Ok(())
}

/// A failed handshake. When key exchange found no algorithm both sides support, says so and
/// points at `legacy_algorithms`.
fn handshake_failure(e: &ssh2::Error, legacy: bool) -> Failure {
    // LIBSSH2_ERROR_KEX_FAILURE: the algorithm lists had nothing in common (or the server hung
    // up during key exchange because of that).
    let kex = e.code() == ssh2::ErrorCode::Session(-5)
        || e.message().contains("exchange encryption keys")
        || e.message().to_ascii_lowercase().contains("agree");
    if !kex {
        return Failure::new(
            ErrorKind::HandshakeFailed,
            format!("SSH handshake failed: {}", e.message()),
        );
    }
    let hint = if legacy {
        "; legacy algorithms were offered too"
    } else {
        ". Only modern algorithms were offered; if the device supports only legacy ones \
         (diffie-hellman-group14-sha1, group1-sha1, ssh-rsa, CBC ciphers), set \
         legacy_algorithms: true on the device"
    };
    Failure::new(
        ErrorKind::HandshakeFailed,
        format!(
            "SSH handshake failed: no common key-exchange, host-key or cipher algorithm with the \
             device ({}){hint}",
            e.message()
        ),
    )
}

/// TCP connect to each resolved address in turn, each with its own timeout.
pub(super) fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Failure::new(
                ErrorKind::Unreachable,
                format!("cannot resolve {host}: {e}"),
            )
        })?
        .collect();
    let mut last = Failure::new(ErrorKind::Unreachable, format!("{host} has no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                last = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Failure::new(
                        ErrorKind::ConnectionRefused,
                        format!("{addr} refused the connection: nothing listens on port {port}"),
                    ),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::new(
                        ErrorKind::Unreachable,
                        format!("no answer from {addr} within {} s", timeout.as_secs_f32()),
                    ),
                    _ => Failure::new(ErrorKind::Unreachable, format!("{addr}: {e}")),
                };
            }
        }
    }
    Err(last)
}

/// Authentication in three steps: the methods the server offers (a server that accepts
/// `none` is done), the credential tried on the methods that fit it, and what was rejected.
fn authenticate(
    session: &Session,
    waiter: &Waiter,
    target: &Target<'_>,
    deadline: Instant,
) -> Result<(), Failure> {
    let Some(methods) = offered_methods(session, waiter, target.username, deadline)? else {
        return Ok(());
    };
    let last_error = try_credential(session, waiter, target, &methods, deadline)?;
    if session.authenticated() {
        return Ok(());
    }
    Err(rejected(target, &methods, &last_error))
}

fn auth_expired() -> Failure {
    Failure::new(
        ErrorKind::Timeout,
        "authentication did not complete within the login timeout",
    )
}

/// The methods the server offers for `user`, or `None` when it accepted the `none` method
/// that listing them tries.
fn offered_methods(
    session: &Session,
    waiter: &Waiter,
    user: &str,
    deadline: Instant,
) -> Result<Option<String>, Failure> {
    match waiter.retry(deadline, || session.auth_methods(user).map(str::to_owned)) {
        Ok(methods) => Ok(Some(methods)),
        Err(Step::Expired) => Err(auth_expired()),
        Err(Step::Ssh(_)) if session.authenticated() => Ok(None),
        Err(Step::Ssh(e)) => Err(Failure::new(
            ErrorKind::AuthFailed,
            format!(
                "the server refused to list authentication methods: {}",
                e.message()
            ),
        )),
    }
}

/// Tries the target's credential on each offered method that fits it, in turn, until the
/// session is authenticated; answers the last rejection's text (empty when nothing fitted).
fn try_credential(
    session: &Session,
    waiter: &Waiter,
    target: &Target<'_>,
    methods: &str,
    deadline: Instant,
) -> Result<String, Failure> {
    let user = target.username;
    let offers = |m: &str| methods.split(',').any(|x| x == m);
    let mut last_error = String::new();
    let mut settle = |tried: Result<(), Step>| match tried {
        Ok(()) => Ok(()),
        Err(Step::Expired) => Err(auth_expired()),
        Err(Step::Ssh(e)) => {
            last_error = e.message().to_owned();
            Ok(())
        }
    };
    match target.auth {
        Auth::Password(password) => {
            if offers("password") {
                settle(waiter.retry(deadline, || {
                    session.userauth_password(user, password.expose())
                }))?;
            }
            if !session.authenticated() && offers("keyboard-interactive") {
                let mut answer = AnswerWith(password);
                settle(waiter.retry(deadline, || {
                    session.userauth_keyboard_interactive(user, &mut answer)
                }))?;
            }
        }
        Auth::Key {
            private_key,
            passphrase,
        } => {
            if offers("publickey") {
                settle(waiter.retry(deadline, || {
                    session.userauth_pubkey_memory(
                        user,
                        None,
                        private_key.expose(),
                        passphrase.as_ref().map(SecretString::expose),
                    )
                }))?;
            }
        }
    }
    Ok(last_error)
}

/// Why the server did not let the target's user in.
fn rejected(target: &Target<'_>, methods: &str, last_error: &str) -> Failure {
    let tried = match target.auth {
        Auth::Password(_) => "password",
        Auth::Key { .. } => "private key",
    };
    let mut message = format!(
        "the server rejected the {tried} of user {}",
        target.username
    );
    if last_error.is_empty() {
        message.push_str(&format!(" (it offers only: {methods})"));
    } else {
        message.push_str(&format!(": {last_error}"));
    }
    Failure::new(ErrorKind::AuthFailed, message)
}

/// Answers every keyboard-interactive prompt with the password.
struct AnswerWith<'a>(&'a SecretString);

impl KeyboardInteractivePrompt for AnswerWith<'_> {
    fn prompt<'b>(
        &mut self,
        _user: &str,
        _instructions: &str,
        prompts: &[Prompt<'b>],
    ) -> Vec<String> {
        prompts.iter().map(|_| self.0.expose().to_owned()).collect()
    }
}
