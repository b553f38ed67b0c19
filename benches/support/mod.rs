//! What the benchmarks share: a fresh, migrated database of their own on DATABASE_URL's server.

use netcron_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;

pub struct BenchDb {
    /// The server's maintenance database, to drop the bench database afterwards.
    pub admin: DatabaseConnection,
    pub db: DatabaseConnection,
    pub db_name: String,
    pub db_url: String,
    pub redis_url: String,
}

/// Reads DATABASE_URL and REDIS_URL (environment, then `.env`), creates a uniquely named
/// database next to DATABASE_URL's and applies the migrations.
pub async fn fresh_database() -> BenchDb {
    let _ = dotenvy::dotenv();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let server = &url[..url.rfind('/').expect("database in DATABASE_URL")];
    let admin = netcron_common::db::connect(&format!("{server}/postgres"))
        .await
        .expect("admin");
    let db_name = format!("netcron_bench_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
        .await
        .expect("create");
    let db_url = format!("{server}/{db_name}");
    let db = netcron_common::db::connect(&db_url).await.expect("db");
    Migrator::up(&db, None).await.expect("migrate");
    BenchDb {
        admin,
        db,
        db_name,
        db_url,
        redis_url,
    }
}
