//! `netcron inventory`: one Windows inventory collection now, without the services — for the
//! users of the agent netcron replaces. The result is written atomically (a temporary file in
//! the same directory, then a rename), so a reader never sees half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::Args;
use netcron_common::config;
use netcron_common::domain::{CommandKind, CredentialKind, Platform, RunStatus, RunTrigger};
use netcron_common::secret::SecretKey;
use netcron_common::secret::context;
use netcron_executor::{ExecutorSettings, Runner};
use netcron_protocol::{Task, TaskCommand, TaskCredential, TaskDevice};
use netcron_store::DatabaseSettings;
use netcron_store::entity::{credential, device};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::json;
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct InventoryArgs {
    /// A device stored in netcron's database (needs DATABASE_URL and NETCRON_SECRET_KEY).
    #[arg(long, conflicts_with_all = ["host", "user"])]
    device: Option<String>,
    /// Host to collect from, instead of a stored device.
    #[arg(long, requires = "user")]
    host: Option<String>,
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// User name on --host.
    #[arg(long)]
    user: Option<String>,
    /// OpenSSH private key file for --user.
    #[arg(long, conflicts_with = "password_env")]
    key: Option<PathBuf>,
    /// Environment variable holding the key's passphrase.
    #[arg(long, requires = "key")]
    passphrase_env: Option<String>,
    /// Environment variable holding --user's password (never a password on the command line).
    #[arg(long)]
    password_env: Option<String>,
    /// Expected `SHA256:` host key of --host; without it the key seen is trusted and reported.
    #[arg(long)]
    host_key: Option<String>,
    /// Where to write the result.
    #[arg(long, default_value = "payload.json")]
    out: PathBuf,
    /// A commands file: only `inventory` lines (any case) are processed; others are skipped
    /// with a warning.
    #[arg(long)]
    commands: Option<PathBuf>,
    /// Seconds the collection may take.
    #[arg(long, default_value_t = 120)]
    timeout: i32,
}

/// Runs the collection and writes the result; returns whether it succeeded.
///
/// # Errors
/// Bad arguments, an unknown device, or a file that cannot be written. A failed collection is
/// not an error: it is written as a result with status `error`.
pub async fn run(args: InventoryArgs) -> anyhow::Result<bool> {
    if let Some(path) = &args.commands
        && inventory_lines(path)? == 0
    {
        bail!("{} has no `inventory` line; nothing to do", path.display());
    }
    let (task, key, stored) = match (&args.device, &args.host) {
        (Some(name), _) => stored_device(name, &args).await?,
        (None, Some(host)) => given_host(host, &args)?,
        (None, None) => bail!("say which host: --device NAME, or --host HOST --user USER"),
    };
    let runner = Runner::new(
        key,
        ExecutorSettings {
            concurrency: 1,
            ..ExecutorSettings::from_env()?
        },
    );
    // Nothing else can hold this one-off run: it starts as soon as its slots are free.
    let Some(outcome) = runner.perform(&task, std::future::ready(true)).await else {
        anyhow::bail!("the run did not start");
    };
    if let Some((db, device)) = stored
        && device.host_key_fingerprint.is_none()
        && let Some(seen) = &outcome.host_key_fingerprint
    {
        // Trust on first use, as the services do.
        let mut pin: device::ActiveModel = device.into();
        pin.host_key_fingerprint = Set(Some(seen.clone()));
        pin.updated_at = Set(Utc::now());
        pin.update(&db)
            .await
            .context("pinning the device's host key")?;
    }
    let succeeded = outcome.status == RunStatus::Succeeded;
    let document = json!({
        "status": outcome.status,
        "error_kind": outcome.error_kind,
        "error_message": outcome.error_message,
        "device": {"name": task.device.name, "host": task.device.host, "port": task.device.port},
        "host_key_fingerprint": outcome.host_key_fingerprint,
        "finished_at": outcome.finished_at,
        "inventory": outcome.payload,
    });
    write_atomically(&args.out, &serde_json::to_vec_pretty(&document)?)?;
    if succeeded {
        tracing::info!(out = %args.out.display(), "inventory written");
    } else {
        tracing::warn!(out = %args.out.display(), error = outcome.error_message.as_deref(), "inventory failed; the result says why");
    }
    Ok(succeeded)
}

/// Counts the `inventory` lines of a commands file, warning about every other line.
fn inventory_lines(path: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut count = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or_default();
        if word.eq_ignore_ascii_case("inventory") {
            count += 1;
        } else {
            tracing::warn!(line = n + 1, command = %word, "skipped: only `inventory` lines are processed");
        }
    }
    if count > 1 {
        tracing::warn!(
            count,
            "several `inventory` lines: one collection serves them all"
        );
    }
    Ok(count)
}

type Stored = Option<(sea_orm::DatabaseConnection, device::Model)>;

async fn stored_device(
    name: &str,
    args: &InventoryArgs,
) -> anyhow::Result<(Task, SecretKey, Stored)> {
    let settings = DatabaseSettings::from_env()?;
    let key = config::secret_key_from_env()?;
    let db = netcron_store::db::connect(&settings.url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    let device = device::Entity::find()
        .filter(device::Column::Name.eq(name))
        .one(&db)
        .await?
        .with_context(|| format!("no device named {name}"))?;
    let credential = credential::Entity::find_by_id(device.credential_id)
        .one(&db)
        .await?
        .with_context(|| format!("the credential of device {name} is gone"))?;
    // A value from a newer version cannot go into a task: this version could not run it.
    let platform = device.platform.known().with_context(|| {
        format!(
            "device {name} has platform {}, which this version does not know",
            device.platform
        )
    })?;
    let kind = credential.kind.known().with_context(|| {
        format!(
            "the credential of device {name} is of kind {}, which this version does not know",
            credential.kind
        )
    })?;
    let task = task(
        TaskDevice {
            id: device.id,
            name: device.name.clone(),
            host: device.host.clone(),
            port: u16::try_from(device.port).unwrap_or(22),
            platform,
            host_key_fingerprint: device.host_key_fingerprint.clone(),
            legacy_algorithms: device.legacy_algorithms,
            // The one-shot inventory connects directly.
            jump_host: None,
            session_reuse: device.session_reuse,
        },
        TaskCredential {
            id: credential.id,
            username: credential.username,
            kind,
            secret: TaskCredential::encode_sealed(&credential.secret),
            passphrase: credential
                .passphrase
                .as_deref()
                .map(TaskCredential::encode_sealed),
            enable_secret: None,
        },
        args.timeout,
    );
    Ok((task, key, Some((db, device))))
}

/// A host from the command line: its secret is sealed under a key that lives only in this
/// process, so the runner handles it exactly like a stored one.
fn given_host(host: &str, args: &InventoryArgs) -> anyhow::Result<(Task, SecretKey, Stored)> {
    let user = args.user.clone().context("--host needs --user")?;
    let env = |name: &str| {
        std::env::var(name).with_context(|| format!("environment variable {name} is not set"))
    };
    let (kind, secret, passphrase) = match (&args.key, &args.password_env) {
        (Some(path), _) => (
            CredentialKind::PrivateKey,
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            args.passphrase_env.as_deref().map(env).transpose()?,
        ),
        (None, Some(var)) => (CredentialKind::Password, env(var)?, None),
        (None, None) => bail!("--host needs --key FILE or --password-env VAR"),
    };
    let key = SecretKey::from_base64(&SecretKey::generate_base64())?;
    let id = Uuid::now_v7();
    let seal = |text: &str, field: &str| {
        TaskCredential::encode_sealed(&key.seal(text, &context::credential(id, field)))
    };
    let task = task(
        TaskDevice {
            id: Uuid::now_v7(),
            name: host.to_owned(),
            host: host.to_owned(),
            port: args.port,
            platform: Platform::Windows,
            host_key_fingerprint: args.host_key.clone(),
            legacy_algorithms: false,
            jump_host: None,
            session_reuse: true,
        },
        TaskCredential {
            id,
            username: user,
            kind,
            secret: seal(&secret, "secret"),
            passphrase: passphrase.as_deref().map(|p| seal(p, "passphrase")),
            enable_secret: None,
        },
        args.timeout,
    );
    Ok((task, key, None))
}

fn task(device: TaskDevice, credential: TaskCredential, timeout_s: i32) -> Task {
    Task {
        v: 1,
        run_id: Uuid::now_v7(),
        schedule_id: None,
        trigger: RunTrigger::Manual,
        scheduled_for: Utc::now(),
        attempt: 1,
        device,
        credential,
        command: TaskCommand {
            id: Uuid::now_v7(),
            kind: CommandKind::WindowsInventory,
            text: String::new(),
            timeout_s: timeout_s.max(1),
            max_output_bytes: 16 * 1024 * 1024,
            max_attempts: 1,
            secret_vars: Vec::new(),
        },
        not_before: None,
    }
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, then renames it over
/// `path`: readers see the old file or the new one, never a partial one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}
