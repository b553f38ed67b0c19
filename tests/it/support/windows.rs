//! Fake Windows hosts: the test sshd with a `ForceCommand` script that checks the command
//! netcron sends and replays fixture output (`executor/fixtures/`) with CRLF line ends, as
//! Windows OpenSSH would.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::app::{TestApp, id};
use crate::support::pipeline::{finished, run_now};
use crate::support::sshd::{SshdOptions, TEST_PASSWORD, TEST_USER, TestSshd};

pub(crate) const PS7: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/executor/fixtures/ps7-win11.json"
));
pub(crate) const REG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/executor/fixtures/reg-query-win10.txt"
));

/// A directory with the fake host's script and the answers it replays. Readable by the test
/// user, removed on drop.
pub(crate) struct FakeWindows {
    pub(crate) dir: PathBuf,
}

impl FakeWindows {
    /// `powershell`: the JSON the PowerShell command prints, or `None` for a host without
    /// PowerShell. `reg`: what `reg query` prints.
    pub(crate) fn new(powershell: Option<&str>, reg: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("netcron-fakewin-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let script = format!(
            r#"#!/bin/sh
# Answers like a Windows host: CRLF line ends, cmd.exe's message when PowerShell is missing.
d={dir}
case "$SSH_ORIGINAL_COMMAND" in
  "powershell.exe -NoProfile -NonInteractive -EncodedCommand "*)
    # The argument must be base64 of the UTF-16LE collection script.
    script=$(printf '%s' "${{SSH_ORIGINAL_COMMAND##* }}" | base64 -d | iconv -f UTF-16LE -t UTF-8) || exit 3
    case "$script" in
      *ConvertTo-Json*) ;;
      *) echo "not the inventory script" >&2; exit 3 ;;
    esac
    if [ -f "$d/ps.json" ]; then sed 's/$/\r/' "$d/ps.json"; exit 0; fi
    printf "'powershell.exe' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n" >&2
    exit 1 ;;
  'reg query "HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"')
    cat "$d/reg.txt"; exit 0 ;;
  *)
    echo "unexpected command: $SSH_ORIGINAL_COMMAND" >&2; exit 127 ;;
esac
"#,
            dir = dir.display()
        );
        let fake = Self { dir };
        fake.write("host.sh", &script, 0o755);
        if let Some(ps) = powershell {
            fake.set_powershell(ps);
        }
        fake.write("reg.txt", reg, 0o644);
        fake
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub(crate) fn set_powershell(&self, json: &str) {
        self.write("ps.json", json, 0o644);
    }

    pub(crate) fn sshd(&self) -> TestSshd {
        TestSshd::start_with(SshdOptions {
            force_command: Some(self.dir.join("host.sh").display().to_string()),
            ..SshdOptions::default()
        })
    }
}

impl Drop for FakeWindows {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) async fn windows_device(app: &TestApp, name: &str, sshd: &TestSshd) -> (Value, Value) {
    let cred = app
        .create(
            "/credentials",
            json!({"name": format!("{name}-cred"), "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    let device = app
        .create(
            "/devices",
            json!({"name": name, "host": "127.0.0.1", "port": sshd.port, "platform": "windows",
                   "credential_id": cred["id"]}),
        )
        .await;
    let command = app
        .create(
            &format!("/devices/{}/commands", id(&device)),
            json!({"name": "inventory", "kind": "windows_inventory"}),
        )
        .await;
    (device, command)
}

pub(crate) async fn run_to_end(app: &TestApp, device: &Value, command: &Value) -> Value {
    let run_id = run_now(app, device, command).await;
    finished(app, &run_id).await
}
