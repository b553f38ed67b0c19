//! Slowing down guessing. Failed sign-ins are counted per account name and per source address,
//! and unknown bearer tokens per source address (apart), in Redis, so every api replica sees the same
//! counts. Past a limit the request is answered 429 with `Retry-After` until the window ends,
//! whatever it presents: a right password does not help while a name is blocked, so a guess that
//! happens to be right is not confirmed.
//!
//! When Redis cannot be reached the counts are skipped (and a warning logged): signing in keeps
//! working through a Redis outage, as reading does.

use redis::AsyncCommands as _;
use sha2::{Digest as _, Sha256};

use crate::state::AppState;

/// How long a failure counts.
pub const WINDOW_S: u64 = 15 * 60;
/// Failed sign-ins per name within the window before that name is blocked.
pub const PER_NAME: u64 = 10;
/// Failed sign-ins per source address within the window.
pub const PER_SOURCE: u64 = 50;
/// Unknown bearer tokens per source address within the window. Guessing a 256-bit token is
/// hopeless whatever the rate, so this only stops a flood, and stays well above what a
/// misconfigured script (or several behind one NAT) sends before someone notices.
pub const TOKENS_PER_SOURCE: u64 = 1000;

fn name_key(state: &AppState, name: &str) -> String {
    let digest = Sha256::digest(name.to_lowercase().as_bytes());
    format!(
        "{}:auth:fail:name:{}",
        state.key_prefix,
        hex::encode(&digest[..16])
    )
}

fn keys(state: &AppState, name: Option<&str>, source: Option<&str>) -> Vec<(String, u64)> {
    let mut keys = Vec::new();
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        keys.push((name_key(state, name), PER_NAME));
    }
    if let Some(source) = source {
        let (kind, limit) = if name.is_some() {
            ("source", PER_SOURCE)
        } else {
            ("token-source", TOKENS_PER_SOURCE)
        };
        keys.push((
            format!("{}:auth:fail:{kind}:{source}", state.key_prefix),
            limit,
        ));
    }
    keys
}

/// Seconds to wait when `name` or `source` has failed too often, else `None`.
pub async fn sign_in_blocked(state: &AppState, name: &str, source: Option<&str>) -> Option<u64> {
    blocked(state, keys(state, Some(name), source)).await
}

/// Counts a failed sign-in against `name` and `source`.
pub async fn sign_in_failed(state: &AppState, name: &str, source: Option<&str>) {
    failed(state, keys(state, Some(name), source)).await;
}

/// Seconds to wait when `source` has presented too many unknown tokens, else `None`.
pub async fn token_blocked(state: &AppState, source: Option<&str>) -> Option<u64> {
    blocked(state, keys(state, None, source)).await
}

/// Counts an unknown token presented from `source`.
pub async fn token_failed(state: &AppState, source: Option<&str>) {
    failed(state, keys(state, None, source)).await;
}

async fn blocked(state: &AppState, keys: Vec<(String, u64)>) -> Option<u64> {
    if keys.is_empty() {
        return None;
    }
    let mut conn = match state.redis.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in limits skipped: Redis is unavailable");
            return None;
        }
    };
    let mut wait = None;
    for (key, limit) in keys {
        let count: Option<u64> = conn.get(&key).await.ok().flatten();
        if count.is_some_and(|c| c >= limit) {
            let ttl: i64 = conn.ttl(&key).await.unwrap_or(0);
            let seconds = u64::try_from(ttl).unwrap_or(1).max(1);
            wait = Some(wait.map_or(seconds, |w: u64| w.max(seconds)));
        }
    }
    wait
}

async fn failed(state: &AppState, keys: Vec<(String, u64)>) {
    let Ok(mut conn) = state.redis.get_multiplexed_async_connection().await else {
        return;
    };
    for (key, _) in keys {
        // The window starts at the first failure and is not extended by later ones (NX).
        let result: redis::RedisResult<()> = redis::pipe()
            .incr(&key, 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(WINDOW_S)
            .arg("NX")
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "counting a failed sign-in failed");
        }
    }
}
