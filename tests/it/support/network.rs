//! Fake network devices: the test sshd with a `ForceCommand` that runs
//! `fixtures/fake_device.py`, which plays an interactive device CLI per platform, and devices
//! made through the API that log in to it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::sshd::{SshdOptions, TEST_PASSWORD, TEST_USER, TestSshd};

const FAKE_DEVICE: &str = include_str!("fixtures/fake_device.py");
pub(crate) const ENABLE_PASSWORD: &str = "Enable-pw-1";
/// The running configuration a fake device starts with.
pub(crate) const IOS_CONFIG: &str =
    "hostname edge-sw1\n!\ninterface GigabitEthernet0/1\n description uplink\n!\n";

/// A fake device's directory: the script, its running configuration and mode files.
pub(crate) struct FakeDevice {
    dir: PathBuf,
    platform: &'static str,
}

impl FakeDevice {
    pub(crate) fn new(platform: &'static str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("netcron-fakedev-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let fake = Self { dir, platform };
        fake.write("fake_device.py", FAKE_DEVICE);
        fake.set_config(IOS_CONFIG);
        fake
    }

    /// Replaces the file at once (write beside it, then rename), so a device reading it in the
    /// middle of a scheduled backup never sees half a configuration.
    pub(crate) fn write(&self, name: &str, text: &str) {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.new"));
        std::fs::write(&temporary, text).expect("write");
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::rename(&temporary, &path).expect("rename");
    }

    pub(crate) fn set_config(&self, text: &str) {
        self.write("config", text);
    }

    pub(crate) fn options(&self) -> SshdOptions {
        SshdOptions {
            force_command: Some(format!(
                "/usr/bin/python3 {dir}/fake_device.py {platform} {dir}",
                dir = self.dir.display(),
                platform = self.platform
            )),
            // One channel per connection, as on many devices: a second exec is refused.
            max_sessions: Some(1),
            ..SshdOptions::default()
        }
    }

    pub(crate) fn sshd(&self) -> TestSshd {
        TestSshd::start_with(self.options())
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// MikroTik logins carry the `+ct` suffix: that user must exist for sshd (the key in the
/// server's `authorized_keys` file lets any existing user in).
pub(crate) fn ensure_ct_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let user = format!("{TEST_USER}+ct");
        let exists = Command::new("id")
            .arg(&user)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let _ = Command::new("useradd")
                .args(["--badname", "-M", "-s", "/bin/sh", &user])
                .output();
        }
        // A user without a password is locked, and sshd refuses locked users even a key.
        if let Ok(mut child) = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                let _ = writeln!(stdin, "{user}:{TEST_PASSWORD}");
            }
            let _ = child.wait();
        }
    });
}

/// A device on `sshd` logging in with the server's client key, plus `extra` device fields.
pub(crate) async fn device(
    app: &TestApp,
    name: &str,
    platform: &str,
    sshd: &TestSshd,
    enable_secret: Option<&str>,
    extra: Value,
) -> Value {
    let mut cred = json!({"name": format!("{name}-cred"), "username": TEST_USER,
                          "private_key": sshd.client_key});
    if let Some(secret) = enable_secret {
        cred["enable_secret"] = json!(secret);
    }
    let cred = app.create("/credentials", cred).await;
    let mut body = json!({"name": name, "host": "127.0.0.1", "port": sshd.port,
                          "platform": platform, "credential_id": cred["id"]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    app.create("/devices", body).await
}
