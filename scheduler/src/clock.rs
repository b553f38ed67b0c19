//! Time as the scheduler sees it. Production uses the system clock; tests inject a clock they
//! move by hand, so hours of schedule time pass in milliseconds.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A clock that follows Postgres: another clock (the system's) plus the offset to
/// `clock_timestamp()` of the database, measured at start and every `sync`. Every role writes
/// its times into Postgres, so the scheduler deciding what is due by Postgres' clock means a
/// skewed scheduler host neither fires early nor late.
pub struct DatabaseClock {
    base: Arc<dyn Clock>,
    offset_us: std::sync::atomic::AtomicI64,
}

impl DatabaseClock {
    pub fn new(base: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            base,
            offset_us: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Measures the offset to Postgres' clock (half the round trip is taken as the query's
    /// moment) and answers it.
    ///
    /// # Errors
    /// When the database fails; the previous offset stays.
    pub async fn sync(&self, db: &sea_orm::DatabaseConnection) -> Result<Duration, sea_orm::DbErr> {
        use sea_orm::ConnectionTrait as _;
        let before = self.base.now();
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT clock_timestamp() AS now",
            ))
            .await?;
        let after = self.base.now();
        let Some(row) = row else {
            return Ok(self.offset());
        };
        let theirs: DateTime<Utc> = row.try_get("", "now")?;
        let ours = before + (after - before) / 2;
        let offset = theirs - ours;
        self.offset_us.store(
            offset.num_microseconds().unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(offset)
    }

    pub fn offset(&self) -> Duration {
        Duration::microseconds(self.offset_us.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clock for DatabaseClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + self.offset()
    }
}

/// Another clock shifted by a fixed amount: a host whose clock is wrong, for tests.
pub struct SkewedClock(pub Arc<dyn Clock>, pub Duration);

impl Clock for SkewedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.now() + self.1
    }
}
