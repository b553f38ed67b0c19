//! Postgres connections.

use std::time::Duration;

use netcron_common::metrics::Telemetry;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement};
use tokio_util::sync::CancellationToken;

/// A Postgres statement with positional parameters: the one way netcron's crates write raw
/// SQL through sea-orm.
pub fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(sea_orm::DatabaseBackend::Postgres, sql, values)
}

/// Adds the standard `postgres` readiness check on `db` to the process's telemetry.
pub fn add_readiness_check(telemetry: &Telemetry, db: &DatabaseConnection) {
    let db = db.clone();
    telemetry.add_check("postgres", move || {
        let db = db.clone();
        async move { db.ping().await.map_err(|e| e.to_string()) }
    });
}

/// Opens a pooled connection. A URL with several hosts or `target_session_attrs` goes
/// through a local forwarder that follows the acceptable host (see [`crate::pgfailover`]); the
/// forwarder lives as long as the pool: it ends when the pool is closed or dropped.
///
/// # Errors
/// When Postgres cannot be reached or refuses the connection.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let Some(multi) = crate::pgfailover::MultiHost::parse(url) else {
        return connect_one(url).await;
    };
    let multi = multi.map_err(|reason| DbErr::Custom(format!("DATABASE_URL: {reason}")))?;
    let forwarding = CancellationToken::new();
    let local = crate::pgfailover::forward(multi, forwarding.clone())
        .await
        .map_err(|e| DbErr::Custom(format!("cannot start the Postgres forwarder: {e}")))?;
    let connected = connect_one(&local).await;
    match &connected {
        Ok(db) => {
            // sqlx marks a pool closed both on `close` and when its last handle is dropped,
            // so the forwarder ends with the pool either way.
            let closed = db.get_postgres_connection_pool().close_event();
            tokio::spawn(async move {
                tokio::select! {
                    () = closed => forwarding.cancel(),
                    () = forwarding.cancelled() => {}
                }
            });
        }
        // A caller waiting for Postgres calls again, with a forwarder of its own.
        Err(_) => forwarding.cancel(),
    }
    connected
}

async fn connect_one(url: &str) -> Result<DatabaseConnection, DbErr> {
    probe(url).await?;
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(20)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// One direct connection, to learn why Postgres cannot be used: the pool reports every
/// failure as "pool timed out", while a connection says "connection refused", "password
/// authentication failed for user …" or "database … does not exist". The message names the
/// server and the database, never the password.
///
/// # Errors
/// `DbErr::Conn` when Postgres cannot be reached or refuses us (worth waiting for: it may be
/// restarting, or its user or database may be created later); `DbErr::Custom` when the URL
/// itself is malformed.
async fn probe(url: &str) -> Result<(), DbErr> {
    use sqlx::Connection as _;
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| DbErr::Custom(format!("DATABASE_URL is not a Postgres URL: {e}")))?;
    let target = format!(
        "Postgres at {}:{} (database {})",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    );
    let reason =
        match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(sqlx::Error::Io(e))) => e.to_string(),
            Ok(Err(sqlx::Error::Database(e))) => e.message().to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        };
    Err(DbErr::Conn(sea_orm::RuntimeErr::Internal(format!(
        "{target}: {reason}"
    ))))
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Splits `postgres://…/name?opts` into the URL of the server's `postgres` database and `name`.
fn split_database(url: &str) -> Option<(String, String)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://")? + 3;
    let slash = base[scheme_end..].rfind('/')? + scheme_end;
    let name = &base[slash + 1..];
    if name.is_empty() {
        return None;
    }
    let mut admin = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        admin.push('?');
        admin.push_str(q);
    }
    Some((admin, name.to_owned()))
}

/// Creates the database named in `url` when it does not exist yet (used by `netcron all`).
///
/// # Errors
/// When the server cannot be reached or the database cannot be created.
pub async fn create_database_if_missing(url: &str) -> Result<(), DbErr> {
    let Some((admin_url, name)) = split_database(url) else {
        return Err(DbErr::Custom("DATABASE_URL names no database".into()));
    };
    let admin = connect(&admin_url).await?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            admin.get_database_backend(),
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.clone().into()],
        ))
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match admin
            .execute_unprepared(&format!("CREATE DATABASE \"{quoted}\""))
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process may have created it in the meantime.
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await
}

/// The Postgres `NOTIFY` channel on which the API announces that a schedule was created,
/// changed, paused, resumed or deleted, so the scheduler re-plans without polling.
pub const SCHEDULE_CHANGED_CHANNEL: &str = "netcron_schedule_changed";

/// The `NOTIFY` channel on which a new manual run announces itself to the outbox publisher.
pub const RUN_QUEUED_CHANNEL: &str = "netcron_run_queued";

#[cfg(test)]
mod tests {
    use super::split_database;

    #[test]
    fn splits_database_name_from_url() {
        assert_eq!(
            split_database("postgres://u:p@h:5432/netcron?sslmode=disable"),
            Some((
                "postgres://u:p@h:5432/postgres?sslmode=disable".into(),
                "netcron".into()
            ))
        );
        assert_eq!(split_database("postgres://h/"), None);
    }
}
