//! Every setting netcron reads, in one place: the variable, the roles that read it, its
//! default as it would be written in the environment, what it means and an example. The
//! parsers in [`crate::config`] refuse a variable that is not here and a default in code that
//! differs from the one here; each role's `--help` and `docs/CONFIGURATION.md` are generated
//! from this list (a test keeps the file in sync).

use std::fmt::Write as _;

/// A setting's value when its variable is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, as it would be written in the environment.
    Value(&'static str),
    /// The role does not start without it.
    Required,
    /// No value; what that means.
    Unset(&'static str),
}

/// One environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    /// The `netcron` commands that read it.
    pub roles: &'static [&'static str],
    pub default: Fallback,
    pub meaning: &'static str,
    /// A value it could have, shown in error messages.
    pub example: &'static str,
}

use Fallback::{Required, Unset, Value};

/// Every setting, in the order the documentation lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "DATABASE_URL",
        roles: &["api", "scheduler", "ingest", "migrate", "all"],
        default: Required,
        meaning: "Postgres URL, `postgres://user[:password]@host:port/db`; several hosts for fail-over as libpq takes them, `postgres://…@db1:5432,db2:5432/db?target_session_attrs=read-write` (required with several hosts; also `primary` or `any`)",
        example: "postgres://netcron:secret@db.example.net:5432/netcron",
    },
    Setting {
        name: "REDIS_URL",
        roles: &["api", "scheduler", "executor", "ingest", "all"],
        default: Required,
        meaning: "Redis URL, `redis://[user:password@]host:port`; `rediss://…` for TLS (the server's certificate is checked against the system's CA store and the PEM file in `SSL_CERT_FILE`); or `redis+sentinel://[user:password@]sentinel1:26379,sentinel2:26379/<master name>` to follow Sentinel fail-overs (no TLS)",
        example: "redis://redis.example.net:6379",
    },
    Setting {
        name: "NETCRON_EMBEDDED",
        roles: &["all"],
        default: Value("auto"),
        meaning: "Whether `all` starts its own Postgres and Redis as child processes: `auto` starts each one whose URL names this machine (`127.0.0.1`, `localhost`, `::1`) where nothing listens, `always` starts both whatever the URLs say (as `netcron all --embedded`), `never` connects to the URLs as they are. They run from the server binaries installed on the machine (Postgres 13 or later, Redis 7.0 or later), on free loopback ports with a generated password, and stop when netcron stops",
        example: "never",
    },
    Setting {
        name: "NETCRON_DATA_DIR",
        roles: &["all"],
        default: Unset(
            "`$XDG_DATA_HOME/netcron`, else `~/.local/share/netcron`; `/var/lib/netcron` when run as root",
        ),
        meaning: "Where the embedded Postgres and Redis keep their data (`postgres/`, `redis/`), logs, ports and password",
        example: "/srv/netcron",
    },
    Setting {
        name: "NETCRON_EMBEDDED_SEARCH",
        roles: &["all"],
        default: Unset(
            "`PATH`, then where distributions install the servers (`/usr/lib/postgresql/<version>/bin`, `/usr/pgsql-<version>/bin`, `/usr/libexec/postgresql<version>`, Homebrew's `postgresql@<version>`, `/usr/local/pgsql/bin`, `/usr/bin`, `/usr/local/bin`, `/opt/homebrew/bin`)",
        ),
        meaning: "Directories (`:`-separated) searched for `postgres`, `initdb` and `redis-server` instead of the default places",
        example: "/opt/pg16/bin:/opt/redis/bin",
    },
    Setting {
        name: "NETCRON_API_ADDR",
        roles: &["api", "all"],
        default: Value("127.0.0.1:8080"),
        meaning: "Where the API listens",
        example: "0.0.0.0:8080",
    },
    Setting {
        name: "NETCRON_API_TOKEN",
        roles: &["api", "all"],
        default: Required,
        meaning: "Accepted bearer tokens, comma-separated",
        example: "token-a,token-b",
    },
    Setting {
        name: "NETCRON_PUBLIC_URL",
        roles: &["api", "all"],
        default: Unset(
            "the console accepts forms from the origin in `Host`, or in `Forwarded` / `X-Forwarded-Host` and `X-Forwarded-Proto` when a proxy sets them",
        ),
        meaning: "The console's address as browsers reach it; when set, state-changing forms are accepted only from its origin (scheme, host and port), whatever `Host` or forwarded headers say, and the session cookie is `Secure` when it is `https`",
        example: "https://netcron.example.net",
    },
    Setting {
        name: "NETCRON_OIDC_PROVIDERS",
        roles: &["api", "all"],
        default: Unset("the console signs in with names and passwords (and bootstrap tokens) only"),
        meaning: "OpenID Connect providers the console's sign-in page offers, a JSON array of `{\"id\", \"name\", \"issuer\", \"client_id\", \"client_secret\", \"scopes\" (default `[\"openid\",\"profile\",\"email\",\"groups\"]`), \"role_claim\" (default `\"groups\"`), \"roles\" (claim value to role: viewer, operator, editor, admin; the highest mapped value wins), \"default_role\" (default null: a person with no mapped value is refused)}`; unknown fields are refused. Register `<console origin>/console/sign-in/oidc/<id>/callback` as the redirect URI at the provider, where the console origin is `NETCRON_PUBLIC_URL` when set, else the scheme and `Host` of the request (https when a proxy says so)",
        example: "[{\"id\":\"corp\",\"name\":\"Corp SSO\",\"issuer\":\"https://sso.example.net\",\"client_id\":\"netcron\",\"client_secret\":\"…\",\"roles\":{\"netcron-admins\":\"admin\",\"netops\":\"operator\"}}]",
    },
    Setting {
        name: "NETCRON_SECRET_KEY",
        roles: &["api", "executor", "ingest", "all"],
        default: Required,
        meaning: "Base64 of 32 random bytes; `netcron keygen` or `openssl rand -base64 32` makes one",
        example: "(output of netcron keygen)",
    },
    Setting {
        name: "NETCRON_AUTO_MIGRATE",
        roles: &["api", "all"],
        default: Value("true"),
        meaning: "Whether `api` and `all` apply migrations at start",
        example: "false",
    },
    Setting {
        name: "NETCRON_STREAM_PREFIX",
        roles: &["api", "scheduler", "executor", "ingest", "all"],
        default: Value("netcron:"),
        meaning: "Prefix of the Redis stream names",
        example: "site-a:",
    },
    Setting {
        name: "NETCRON_MISFIRE_GRACE_S",
        roles: &["scheduler", "all"],
        default: Value("60"),
        meaning: "A fire time older than this when processed is a misfire",
        example: "120",
    },
    Setting {
        name: "NETCRON_SCHEDULER_HORIZON_MS",
        roles: &["scheduler", "all"],
        default: Value("5000"),
        meaning: "How far ahead of their fire time runs are committed and published; executors hold them until the fire time (0: at the fire time)",
        example: "2000",
    },
    Setting {
        name: "NETCRON_SCHEDULER_BATCH",
        roles: &["scheduler", "all"],
        default: Value("1000"),
        meaning: "Schedules claimed per transaction",
        example: "2000",
    },
    Setting {
        name: "NETCRON_SCHEDULER_WORKERS",
        roles: &["scheduler", "all"],
        default: Value("2"),
        meaning: "Concurrent claim transactions during a pass",
        example: "4",
    },
    Setting {
        name: "NETCRON_PUBLISH_BATCH",
        roles: &["scheduler", "all"],
        default: Value("1000"),
        meaning: "Tasks published per outbox transaction",
        example: "2000",
    },
    Setting {
        name: "NETCRON_LEASE_TTL_S",
        roles: &["executor", "all"],
        default: Value("30"),
        meaning: "How long an executor's lease on a running command lasts unrenewed (renewed every sixth of it)",
        example: "60",
    },
    Setting {
        name: "NETCRON_LEASE_CONFIRM_S",
        roles: &["scheduler", "all"],
        default: Value("15"),
        meaning: "An expired lease must stay unrenewed this long, seen on two re-queue passes, before its run is re-queued as the next attempt",
        example: "30",
    },
    Setting {
        name: "NETCRON_QUEUED_LEASE_S",
        roles: &["scheduler", "all"],
        default: Value("900"),
        meaning: "Only for tasks published by an older netcron (no recorded stream entry): published again when not started within this",
        example: "1800",
    },
    Setting {
        name: "NETCRON_RETENTION_DAYS",
        roles: &["scheduler", "all"],
        default: Value("90"),
        meaning: "Finished runs older than this are deleted, by the job `NETCRON_RETENTION_CRON` (fractions allowed: `0.007` is about 10 minutes)",
        example: "30",
    },
    Setting {
        name: "NETCRON_RETENTION_PER_SCHEDULE",
        roles: &["scheduler", "all"],
        default: Value("10000"),
        meaning: "Finished runs kept per schedule, newest first",
        example: "20000",
    },
    Setting {
        name: "NETCRON_CONFIG_VERSIONS_KEEP",
        roles: &["scheduler", "all"],
        default: Value("1000"),
        meaning: "Configuration versions kept per device, newest first (`0` keeps all)",
        example: "2000",
    },
    Setting {
        name: "NETCRON_RETENTION_CRON",
        roles: &["scheduler", "all"],
        default: Value("0 17 3 * * *"),
        meaning: "When retention runs (6-field cron with seconds, UTC)",
        example: "0 30 2 * * *",
    },
    Setting {
        name: "NETCRON_REQUEUE_CRON",
        roles: &["scheduler", "all"],
        default: Value("*/10 * * * * *"),
        meaning: "When runs whose attempt was lost are looked for and re-queued",
        example: "*/30 * * * * *",
    },
    Setting {
        name: "NETCRON_TRIM_CRON",
        roles: &["scheduler", "all"],
        default: Value("0 * * * * *"),
        meaning: "When streams are trimmed",
        example: "0 */5 * * * *",
    },
    Setting {
        name: "NETCRON_STREAM_RETENTION_DAYS",
        roles: &["scheduler", "all"],
        default: Value("7"),
        meaning: "Entries of the `events` and `dead-letter` streams older than this are trimmed by the trim job (fractions allowed; both are also capped at ~100,000 entries)",
        example: "1.5",
    },
    Setting {
        name: "NETCRON_EXECUTOR_HOLD_AHEAD",
        roles: &["executor", "all"],
        default: Value("10000"),
        meaning: "Tasks published ahead of their fire time one executor holds at most; beyond it, they stay on the stream for other executors",
        example: "2000",
    },
    Setting {
        name: "NETCRON_EXECUTOR_CONCURRENCY",
        roles: &["executor", "all"],
        default: Value("64"),
        meaning: "Commands running at once per executor process",
        example: "128",
    },
    Setting {
        name: "NETCRON_EXECUTOR_PER_DEVICE",
        roles: &["executor", "all"],
        default: Value("1"),
        meaning: "Commands running at once per device, counted across every executor (a Redis semaphore)",
        example: "2",
    },
    Setting {
        name: "NETCRON_EXECUTOR_START_REPLICAS",
        roles: &["executor", "all"],
        default: Value("0"),
        meaning: "Redis replicas that must acknowledge a run's lease (`WAIT`) before its command starts, so that a Sentinel fail-over to one of them cannot start the same attempt again; 0 does not wait. A start not acknowledged within NETCRON_EXECUTOR_START_WAIT_MS still runs and is counted (netcron_executor_unreplicated_starts_total)",
        example: "1",
    },
    Setting {
        name: "NETCRON_EXECUTOR_START_WAIT_MS",
        roles: &["executor", "all"],
        default: Value("100"),
        meaning: "How long an executor waits for NETCRON_EXECUTOR_START_REPLICAS replicas to acknowledge a run's lease",
        example: "20",
    },
    Setting {
        name: "NETCRON_EXECUTOR_ZONES",
        roles: &["executor", "all"],
        default: Value("default"),
        meaning: "The zones this executor serves, comma-separated: it reads only their tasks streams, so it runs only the commands of devices in them (zone names: lower-case letters, digits, `_` and `-`)",
        example: "site-a,site-b",
    },
    Setting {
        name: "NETCRON_SSH_IDLE_S",
        roles: &["executor", "all"],
        default: Value("5"),
        meaning: "Seconds an SSH session stays open after a run for the same device's next run (a burst logs in once); 0 logs in for every run. A device with `session_reuse: false` always logs in afresh",
        example: "30",
    },
    Setting {
        name: "NETCRON_SSH_CONNECT_TIMEOUT_S",
        roles: &["executor", "all"],
        default: Value("10"),
        meaning: "TCP connect timeout",
        example: "20",
    },
    Setting {
        name: "NETCRON_SSH_LOGIN_TIMEOUT_S",
        roles: &["executor", "all"],
        default: Value("30"),
        meaning: "SSH handshake plus authentication",
        example: "60",
    },
    Setting {
        name: "NETCRON_EXECUTOR_RECLAIM_IDLE_S",
        roles: &["executor", "all"],
        default: Value("60"),
        meaning: "A task untouched this long is taken over from its (dead) executor",
        example: "120",
    },
    Setting {
        name: "NETCRON_EXECUTOR_MAX_DELIVERIES",
        roles: &["executor", "all"],
        default: Value("5"),
        meaning: "A task delivered more often is dead-lettered and its run ends `error`",
        example: "10",
    },
    Setting {
        name: "NETCRON_EXECUTOR_GRACE_S",
        roles: &["executor", "all"],
        default: Value("30"),
        meaning: "On SIGTERM, how long in-flight runs may take to finish",
        example: "60",
    },
    Setting {
        name: "NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S",
        roles: &["executor", "all"],
        default: Value("60"),
        meaning: "How long decoding, secret scrubbing, normalizing and parsing one run's output may take (on a blocking thread) before the run ends `error` / `internal`",
        example: "120",
    },
    Setting {
        name: "NETCRON_EXECUTOR_DONE_TTL_S",
        roles: &["executor", "all"],
        default: Value("86400"),
        meaning: "Safety-net lifetime of a run's lease key whose outcome never reached ingest, and of a first-contact host-key pin. Keys of stored runs go 120 s after ingest stores them, so Redis holds ~244 B per run in flight plus two minutes of finished runs (~30 MB at 1,000 runs/s)",
        example: "172800",
    },
    Setting {
        name: "NETCRON_RETRY_BASE_MS",
        roles: &["executor", "all"],
        default: Value("1000"),
        meaning: "First retry delay for transient connection errors",
        example: "2000",
    },
    Setting {
        name: "NETCRON_RETRY_MAX_MS",
        roles: &["executor", "all"],
        default: Value("30000"),
        meaning: "Longest delay between retries of transient connection errors (the delay doubles from `NETCRON_RETRY_BASE_MS` up to this)",
        example: "60000",
    },
    Setting {
        name: "NETCRON_INGEST",
        roles: &["api", "all"],
        default: Value("true"),
        meaning: "Whether `api` also ingests results (turn off when running `netcron ingest` separately)",
        example: "false",
    },
    Setting {
        name: "NETCRON_INGEST_BATCH",
        roles: &["api", "ingest", "all"],
        default: Value("1000"),
        meaning: "Results stored per transaction",
        example: "2000",
    },
    Setting {
        name: "NETCRON_INGEST_WORKERS",
        roles: &["api", "ingest", "all"],
        default: Value("2"),
        meaning: "Concurrent ingest transactions",
        example: "4",
    },
    Setting {
        name: "NETCRON_SCHEDULER_OPS_ADDR",
        roles: &["scheduler"],
        default: Value("0.0.0.0:9091"),
        meaning: "`netcron scheduler`'s `/health`, `/ready`, `/metrics` (`off` disables)",
        example: "127.0.0.1:9091",
    },
    Setting {
        name: "NETCRON_EXECUTOR_OPS_ADDR",
        roles: &["executor"],
        default: Value("0.0.0.0:9092"),
        meaning: "The same for `netcron executor`",
        example: "off",
    },
    Setting {
        name: "NETCRON_INGEST_OPS_ADDR",
        roles: &["ingest"],
        default: Value("0.0.0.0:9093"),
        meaning: "The same for `netcron ingest` (the api and `all` serve them on the API port)",
        example: "127.0.0.1:9093",
    },
    Setting {
        name: "NETCRON_UNREACHABLE_AFTER",
        roles: &["api", "ingest", "all"],
        default: Value("3"),
        meaning: "Runs in a row that cannot reach a device before `device_unreachable`",
        example: "6",
    },
    Setting {
        name: "NETCRON_WEBHOOK_RETRY_BASE_MS",
        roles: &["api", "ingest", "all"],
        default: Value("5000"),
        meaning: "First webhook retry delay, doubled per attempt (capped at an hour)",
        example: "10000",
    },
    Setting {
        name: "NETCRON_WEBHOOK_MAX_ATTEMPTS",
        roles: &["api", "ingest", "all"],
        default: Value("8"),
        meaning: "Webhook attempts before a delivery is `failed`",
        example: "16",
    },
    Setting {
        name: "NETCRON_WEBHOOK_TIMEOUT_S",
        roles: &["api", "ingest", "all"],
        default: Value("10"),
        meaning: "Timeout of one webhook POST",
        example: "20",
    },
    Setting {
        name: "NETCRON_WEBHOOK_ALLOW",
        roles: &["api", "ingest", "all"],
        default: Unset("public addresses only"),
        meaning: "Which non-public addresses webhooks may reach, comma-separated: `private` (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), `loopback` (127/8, ::1). Link-local (169.254/16, so the cloud metadata address, and fe80::/10), unspecified, multicast and broadcast addresses are always refused; checked at creation (422) and on every address a name resolves to at delivery; redirects are never followed",
        example: "private,loopback",
    },
    Setting {
        name: "NETCRON_EVENTS_RETENTION_DAYS",
        roles: &["api", "ingest", "all"],
        default: Value("30"),
        meaning: "Published events and finished (`delivered`, `failed`) webhook deliveries older than this are deleted, hourly (fractions allowed); unpublished events and pending deliveries are kept",
        example: "7",
    },
    Setting {
        name: "NETCRON_AUDIT_RETENTION_DAYS",
        roles: &["api", "ingest", "all"],
        default: Value("365"),
        meaning: "Audit log entries older than this are deleted, hourly (fractions allowed)",
        example: "730",
    },
    Setting {
        name: "NETCRON_LIVE_FOLLOWERS",
        roles: &["api", "all"],
        default: Value("512"),
        meaning: "Live-output followers (`GET /runs/{id}/output/live`, the console's run page) one api process serves at once; one more answers 429 with `Retry-After`. All of them share two Redis connections",
        example: "2000",
    },
    Setting {
        name: "NETCRON_LIVE_FOLLOWERS_PER_CLIENT",
        roles: &["api", "all"],
        default: Value("16"),
        meaning: "Live-output followers one API token or console session may have open at once in one api process; one more answers 429 with `Retry-After`",
        example: "4",
    },
    Setting {
        name: "NETCRON_LIVE_FOLLOW_MAX_S",
        roles: &["api", "all"],
        default: Value("3600"),
        meaning: "Seconds one live-output follow lasts at most, whatever the run does (even a run that stays queued); it then ends with a `timeout` event and the client may follow again",
        example: "600",
    },
    Setting {
        name: "NETCRON_LIVE_END_TTL_S",
        roles: &["executor", "all"],
        default: Value("30"),
        meaning: "Seconds a run's live stream is kept after its attempt's `end` entry (a stream is written only while someone follows the run)",
        example: "60",
    },
    Setting {
        name: "NETCRON_LIVE_CHANNEL",
        roles: &["executor", "all"],
        default: Value("256"),
        meaning: "Chunks of output in flight from a command's SSH thread to its live publisher; beyond this, chunks are dropped from the live view (never from the stored output) and the gap is marked. `1` forces drops, for fault tests",
        example: "1",
    },
    Setting {
        name: "NETCRON_LOG",
        roles: &[
            "api",
            "scheduler",
            "executor",
            "ingest",
            "migrate",
            "all",
            "inventory",
        ],
        default: Value("info,sqlx=warn,sea_orm=warn,tokio_cron_scheduler=warn"),
        meaning: "Log filter (`tracing` syntax, e.g. `info,netcron_api=debug`); `RUST_LOG` also works",
        example: "info,netcron_executor=debug",
    },
    Setting {
        name: "NETCRON_LOG_FORMAT",
        roles: &[
            "api",
            "scheduler",
            "executor",
            "ingest",
            "migrate",
            "all",
            "inventory",
        ],
        default: Unset("human-readable text"),
        meaning: "`json` for JSON lines",
        example: "json",
    },
];

/// The setting named `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The settings `role` reads.
pub fn for_role(role: &str) -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(move |s| s.roles.contains(&role))
}

fn default_text(default: Fallback) -> String {
    match default {
        Value(v) => format!("`{v}`"),
        Required => "required".to_owned(),
        Unset(what) => format!("unset: {what}"),
    }
}

/// The settings of `role`, for its `--help`.
pub fn help(role: &str) -> String {
    let mut text = String::from(
        "Settings (environment variables; `.env` in the working directory is read too, and the \
         environment wins):\n",
    );
    for s in for_role(role) {
        let _ = write!(
            text,
            "\n  {}  [{}]\n      {}\n",
            s.name,
            match s.default {
                Value(v) => format!("default: {v}"),
                Required => "required".to_owned(),
                Unset(what) => format!("unset: {what}"),
            },
            s.meaning.replace('`', "")
        );
    }
    text.push_str("\nAll settings with examples: docs/CONFIGURATION.md\n");
    text
}

/// `docs/CONFIGURATION.md`.
pub fn markdown() -> String {
    let mut text = String::from(
        "# Configuration\n\n\
         <!-- Generated from common/src/catalog.rs by `NETCRON_WRITE_DOCS=1 cargo test --test it \
         configuration_reference`; edit the catalog, not this file. -->\n\n\
         netcron reads its settings from the environment; `.env` in the working directory is \
         read too, and the environment wins. A setting that is set but malformed stops the \
         process with one line naming the variable, what is wrong and an example. Each \
         command's `--help` lists the settings it reads.\n\n\
         | Variable | Read by | Default | Meaning | Example |\n|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let _ = writeln!(
            text,
            "| `{}` | {} | {} | {} | `{}` |",
            s.name,
            s.roles
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", "),
            default_text(s.default),
            s.meaning.replace('|', "\\|"),
            s.example
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_setting_has_a_role() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(!s.roles.is_empty(), "{}", s.name);
            assert!(
                SETTINGS[..i].iter().all(|t| t.name != s.name),
                "{} twice",
                s.name
            );
        }
    }
}
