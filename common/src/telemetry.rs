//! Logging setup shared by every role.

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber: JSON lines when `NETCRON_LOG_FORMAT=json`,
/// human-readable otherwise; the filter comes from `NETCRON_LOG` (or `RUST_LOG`), default `info`
/// with the libraries' own chatter (sqlx, sea-orm, the cron job runner) at `warn`.
pub fn init() {
    let set = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    let filter = set("NETCRON_LOG")
        .or_else(|| set("RUST_LOG"))
        .unwrap_or_else(|| "info,sqlx=warn,sea_orm=warn,tokio_cron_scheduler=warn".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("NETCRON_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colour only on a terminal: a log redirected to a file or a pipe gets plain text, and
    // `NO_COLOR` (no-color.org) turns it off everywhere.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_target(false);
    // A second initialisation (tests) is harmless, so its error is ignored.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
