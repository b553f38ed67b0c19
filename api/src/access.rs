//! Who may do what: every route's rule in one table ([`RULES`]), applied by one middleware
//! ([`guard`]) in front of both doors (the REST API and the console), which also records every
//! state-changing request in the audit log.
//!
//! Architecture invariants:
//! - A route is reachable only through its rule: a route without one is refused (403) for
//!   everybody, and the integration test `access::every_operation_has_a_rule_and_each_role_gets_it`
//!   walks the OpenAPI document so a new operation without a rule fails the build.
//! - A handler never decides *whether* a role may act; it may only narrow *what* an account
//!   sees of its own things (its tokens).
//! - Who a request is is resolved here, once: the bearer token (a `NETCRON_API_TOKEN` or an
//!   account's token) or, on console routes, the session cookie.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Redirect, Response};
use netcron_services::people::{self, Principal, Role, TokenCheck};

use crate::error::ApiError;
use crate::state::AppState;

/// The name of the console's session cookie: the other way a request can say who it is.
pub const SESSION_COOKIE: &str = "netcron_session";

/// What a route asks of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Anyone: health, readiness, metrics, the docs, the sign-in page, static assets.
    Public,
    /// At least this role.
    Role(Role),
}

/// One route's rule. `path` is the route as the router declares it (`/devices/{device_id}`;
/// console routes with their own parameter names), `writes` whether a request changes state
/// and so is audited.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub need: Need,
    pub writes: bool,
}

const fn public(method: &'static str, path: &'static str) -> Rule {
    Rule {
        method,
        path,
        need: Need::Public,
        writes: false,
    }
}

const fn read(method: &'static str, path: &'static str) -> Rule {
    Rule {
        method,
        path,
        need: Need::Role(Role::Viewer),
        writes: false,
    }
}

const fn act(method: &'static str, path: &'static str, role: Role) -> Rule {
    Rule {
        method,
        path,
        need: Need::Role(role),
        writes: true,
    }
}

/// A page or a read that only some roles may see (a form for a change, webhooks' URLs).
const fn see(method: &'static str, path: &'static str, role: Role) -> Rule {
    Rule {
        method,
        path,
        need: Need::Role(role),
        writes: false,
    }
}

use Role::{Admin, Editor, Operator, Viewer};

/// Every route's rule. Reads are for every role but webhooks (their URLs often hold the
/// receiver's secret) and people and the audit log (admins'); runs, cancels, retries, pauses and
/// resumes are operators'; changes to what runs are editors'; credentials, webhooks and people
/// are admins'. A signed-in account of any role manages its own tokens.
pub const RULES: &[Rule] = &[
    // Open to anyone.
    public("GET", "/health"),
    public("GET", "/ready"),
    public("GET", "/metrics"),
    public("GET", "/console"),
    public("GET", "/console/sign-in"),
    public("POST", "/console/sign-in"),
    // Signing in through an OpenID Connect provider: before anyone is signed in.
    public("GET", "/console/sign-in/oidc/{provider}"),
    public("GET", "/console/sign-in/oidc/{provider}/callback"),
    public("GET", "/console/assets/{name}"),
    public("GET", "/favicon.ico"),
    public("GET", "/openapi.json"),
    public("GET", "/docs"),
    public("GET", "/docs/"),
    public("GET", "/docs/{*rest}"),
    // Credentials: names and usernames are readable (devices name them); secrets never are.
    read("GET", "/credentials"),
    read("GET", "/credentials/{credential_id}"),
    act("POST", "/credentials", Admin),
    act("PATCH", "/credentials/{credential_id}", Admin),
    act("DELETE", "/credentials/{credential_id}", Admin),
    // Devices and the fleet in bulk.
    read("GET", "/devices"),
    read("GET", "/devices/{device_id}"),
    read("GET", "/devices/export"),
    act("POST", "/devices", Editor),
    act("PATCH", "/devices/{device_id}", Editor),
    act("DELETE", "/devices/{device_id}", Editor),
    act("POST", "/devices/import", Editor),
    act("POST", "/devices/tags", Editor),
    // Commands.
    read("GET", "/devices/{device_id}/commands"),
    read("GET", "/devices/{device_id}/commands/{command_id}"),
    act("POST", "/devices/{device_id}/commands", Editor),
    act(
        "PATCH",
        "/devices/{device_id}/commands/{command_id}",
        Editor,
    ),
    act(
        "DELETE",
        "/devices/{device_id}/commands/{command_id}",
        Editor,
    ),
    act(
        "POST",
        "/devices/{device_id}/commands/{command_id}/run",
        Operator,
    ),
    // Configs and inventory.
    read("GET", "/devices/{device_id}/configs"),
    read("GET", "/devices/{device_id}/configs/{version}"),
    read("GET", "/devices/{device_id}/configs/diff"),
    read("GET", "/devices/{device_id}/inventory"),
    read("GET", "/devices/{device_id}/inventory/history"),
    read("GET", "/devices/{device_id}/inventory/diff"),
    // Jobs.
    read("GET", "/jobs"),
    read("GET", "/jobs/{job_id}"),
    read("GET", "/jobs/{job_id}/devices"),
    read("GET", "/jobs/{job_id}/runs"),
    read("GET", "/jobs/{job_id}/schedules"),
    read("GET", "/devices/{device_id}/jobs"),
    read("GET", "/job-runs/{job_run_id}"),
    read("GET", "/job-runs/{job_run_id}/runs"),
    // A preview changes nothing: whoever may read the devices may see what a target matches.
    read("POST", "/jobs/preview"),
    act("POST", "/jobs", Editor),
    act("PATCH", "/jobs/{job_id}", Editor),
    act("DELETE", "/jobs/{job_id}", Editor),
    act("POST", "/jobs/{job_id}/schedules", Editor),
    act("POST", "/jobs/{job_id}/runs", Operator),
    act("POST", "/job-runs/{job_run_id}/retry-failed", Operator),
    act("POST", "/job-runs/{job_run_id}/cancel", Operator),
    // Runs.
    read("GET", "/runs"),
    read("GET", "/runs/{run_id}"),
    read("GET", "/runs/{run_id}/output"),
    read("GET", "/runs/{run_id}/output/live"),
    read("GET", "/devices/{device_id}/results"),
    act("POST", "/runs/{run_id}/cancel", Operator),
    // Schedules.
    read("GET", "/schedules"),
    read("GET", "/schedules/{schedule_id}"),
    read("GET", "/schedules/{schedule_id}/preview"),
    read(
        "GET",
        "/devices/{device_id}/commands/{command_id}/schedules",
    ),
    act(
        "POST",
        "/devices/{device_id}/commands/{command_id}/schedules",
        Editor,
    ),
    act("PATCH", "/schedules/{schedule_id}", Editor),
    act("DELETE", "/schedules/{schedule_id}", Editor),
    act("POST", "/schedules/{schedule_id}/pause", Operator),
    act("POST", "/schedules/{schedule_id}/resume", Operator),
    // Webhooks: their URLs often carry the receiver's secret, so even reading them is admins'.
    see("GET", "/webhooks", Admin),
    see("GET", "/webhooks/{webhook_id}", Admin),
    see("GET", "/webhooks/{webhook_id}/deliveries", Admin),
    act("POST", "/webhooks", Admin),
    act("PATCH", "/webhooks/{webhook_id}", Admin),
    act("DELETE", "/webhooks/{webhook_id}", Admin),
    // People, tokens, the audit log.
    read("GET", "/me"),
    read("GET", "/tokens"),
    act("POST", "/tokens", Viewer),
    act("DELETE", "/tokens/{token_id}", Viewer),
    see("GET", "/users", Admin),
    see("GET", "/users/{user_id}", Admin),
    act("POST", "/users", Admin),
    act("PATCH", "/users/{user_id}", Admin),
    see("GET", "/audit", Admin),
    // The console: the same rules for the same things.
    read("GET", "/"),
    act("POST", "/console/sign-out", Viewer),
    see("GET", "/console/credentials", Viewer),
    see("GET", "/console/credentials/new", Admin),
    act("POST", "/console/credentials", Admin),
    act("POST", "/console/credentials/{id}", Admin),
    see("GET", "/console/credentials/{id}/edit", Admin),
    see("GET", "/console/credentials/{id}/delete", Admin),
    act("POST", "/console/credentials/{id}/delete", Admin),
    see("GET", "/console/webhooks", Admin),
    act("POST", "/console/webhooks", Admin),
    act("POST", "/console/webhooks/{id}", Admin),
    see("GET", "/console/webhooks/{id}/edit", Admin),
    see("GET", "/console/webhooks/{id}/delete", Admin),
    act("POST", "/console/webhooks/{id}/delete", Admin),
    read("GET", "/console/devices"),
    see("GET", "/console/devices/new", Editor),
    act("POST", "/console/devices", Editor),
    read("GET", "/console/devices/{id}"),
    act("POST", "/console/devices/{id}", Editor),
    see("GET", "/console/devices/{id}/edit", Editor),
    see("GET", "/console/devices/{id}/repin", Editor),
    act("POST", "/console/devices/{id}/repin", Editor),
    see("GET", "/console/devices/{id}/delete", Editor),
    act("POST", "/console/devices/{id}/delete", Editor),
    see("GET", "/console/devices/import", Editor),
    act("POST", "/console/devices/import", Editor),
    read("GET", "/console/devices/export"),
    act("POST", "/console/devices/tags", Editor),
    act("POST", "/console/devices/{id}/commands", Editor),
    act(
        "POST",
        "/console/devices/{id}/commands/{command_id}",
        Editor,
    ),
    see(
        "GET",
        "/console/devices/{id}/commands/{command_id}/edit",
        Editor,
    ),
    see(
        "GET",
        "/console/devices/{id}/commands/{command_id}/delete",
        Editor,
    ),
    act(
        "POST",
        "/console/devices/{id}/commands/{command_id}/delete",
        Editor,
    ),
    act(
        "POST",
        "/console/devices/{id}/commands/{command_id}/run",
        Operator,
    ),
    read("GET", "/console/devices/{id}/configs"),
    read("GET", "/console/devices/{id}/configs/{version}"),
    read("GET", "/console/devices/{id}/inventory"),
    read("GET", "/console/jobs"),
    see("GET", "/console/jobs/new", Editor),
    act("POST", "/console/jobs", Editor),
    read("POST", "/console/jobs/preview"),
    read("GET", "/console/jobs/{id}"),
    act("POST", "/console/jobs/{id}", Editor),
    see("GET", "/console/jobs/{id}/edit", Editor),
    see("GET", "/console/jobs/{id}/delete", Editor),
    act("POST", "/console/jobs/{id}/delete", Editor),
    act("POST", "/console/jobs/{id}/run", Operator),
    read("GET", "/console/job-runs/{id}"),
    read("GET", "/console/job-runs/{id}/grid"),
    act("POST", "/console/job-runs/{id}/retry-failed", Operator),
    act("POST", "/console/job-runs/{id}/cancel", Operator),
    read("GET", "/console/runs"),
    read("GET", "/console/runs/{id}"),
    read("GET", "/console/runs/{id}/live"),
    read("GET", "/console/runs/{id}/facts"),
    act("POST", "/console/runs/{id}/cancel", Operator),
    read("GET", "/console/schedules"),
    see("GET", "/console/schedules/new", Editor),
    act("POST", "/console/schedules", Editor),
    read("POST", "/console/schedules/preview"),
    act("POST", "/console/schedules/{id}", Editor),
    see("GET", "/console/schedules/{id}/edit", Editor),
    see("GET", "/console/schedules/{id}/delete", Editor),
    act("POST", "/console/schedules/{id}/delete", Editor),
    act("POST", "/console/schedules/{id}/pause", Operator),
    act("POST", "/console/schedules/{id}/resume", Operator),
    read("GET", "/console/account"),
    act("POST", "/console/account/tokens", Viewer),
    act("POST", "/console/account/tokens/{id}/revoke", Viewer),
    see("GET", "/console/users", Admin),
    act("POST", "/console/users", Admin),
    act("POST", "/console/users/{id}", Admin),
    see("GET", "/console/users/{id}/edit", Admin),
    see("GET", "/console/audit", Admin),
];

/// The rule of a route, by method and declared path (`HEAD` is `GET`'s, as the router answers
/// it).
pub fn rule(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RULES.iter().find(|r| r.path == path && r.method == method)
}

/// Who a request is, as the guard resolved it; handlers take it from the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The token's own name when the request presented an account's token.
    pub token_name: Option<String>,
    /// The console session's CSRF token, when the request came with a session cookie.
    pub csrf: Option<String>,
}

impl Caller {
    /// The name runs and audit entries record.
    pub fn label(&self) -> String {
        self.principal.label(self.token_name.as_deref())
    }
}

/// Whether a route belongs to the console (answers HTML, signs in by cookie).
fn is_console(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

/// The middleware in front of every route: resolves who the request is, applies the route's
/// rule, and records state-changing requests in the audit log.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(matched) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        // No route matched: the fallback answers 404 or 405, which reveal nothing.
        return next.run(request).await;
    };
    let console = is_console(&matched);
    let Some(rule) = rule(request.method(), &matched) else {
        tracing::error!(method = %request.method(), route = %matched, "a route has no access rule");
        return refuse(
            console,
            ApiError::Forbidden("this route has no access rule, so nobody may use it"),
        );
    };
    let Need::Role(needed) = rule.need else {
        return next.run(request).await;
    };
    let source = source(request.extensions());
    let request_id = request_id(&request);
    let caller = match identify(&state, request.headers(), console, source.as_deref()).await {
        Ok(Some(caller)) => caller,
        Ok(None) if console => {
            let (parts, _) = request.into_parts();
            return crate::console::session::sign_in_redirect(&parts);
        }
        Ok(None) => {
            if let Some(page) = console_page_for(&request) {
                return Redirect::to(&page).into_response();
            }
            return refuse(
                false,
                ApiError::Unauthorized(if request.headers().contains_key(header::AUTHORIZATION) {
                    "the bearer token is not valid"
                } else {
                    "the Authorization header is missing"
                }),
            );
        }
        Err(e) => return refuse(console, e),
    };
    let action = format!("{} {matched}", request.method());
    let resource = request.uri().path().to_owned();
    let allowed = caller.principal.role >= needed;
    let mut response = if allowed {
        request.extensions_mut().insert(caller.clone());
        next.run(request).await
    } else {
        refuse(console, ApiError::Forbidden(needs(needed)))
    };
    if rule.writes {
        let entry = people::Audit {
            actor_kind: caller.principal.kind.as_str(),
            actor_id: caller.principal.user_id,
            actor_name: caller.label(),
            action,
            resource: Some(resource),
            status: response.status().as_u16(),
            source,
            request_id: Some(request_id.clone()),
            detail: caller
                .principal
                .token_id
                .map(|id| serde_json::json!({"token_id": id})),
        };
        if let Err(e) = people::record(&state.db, entry).await {
            tracing::error!(error = %e, "recording an audit entry failed");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The client's address as the server saw it (a proxy's, behind one).
pub fn source(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

fn needs(role: Role) -> &'static str {
    match role {
        Role::Viewer => "this needs a signed-in account",
        Role::Operator => "your role does not allow this: it needs the operator role or above",
        Role::Editor => "your role does not allow this: it needs the editor role or above",
        Role::Admin => "your role does not allow this: it needs the admin role",
    }
}

fn refuse(console: bool, error: ApiError) -> Response {
    if console {
        crate::console::Shown(error).into_response()
    } else {
        error.into_response()
    }
}

/// The client's `X-Request-Id` when it is a short printable token, else a new one.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Resolves who a request is: its bearer token on any route, else its session cookie on a
/// console route. `None` when it says nothing valid.
async fn identify(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    console: bool,
    source: Option<&str>,
) -> Result<Option<Caller>, ApiError> {
    if let Some(presented) = headers.get(header::AUTHORIZATION) {
        let presented = presented.as_bytes();
        let Some(token) = presented
            .strip_prefix(b"Bearer ")
            .or_else(|| presented.strip_prefix(b"bearer "))
        else {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        };
        let token = std::str::from_utf8(token).unwrap_or_default().trim();
        return bearer(state, token, source).await;
    }
    if console {
        return crate::console::session::lookup(state, headers).await;
    }
    Ok(None)
}

async fn bearer(
    state: &AppState,
    token: &str,
    source: Option<&str>,
) -> Result<Option<Caller>, ApiError> {
    if crate::console::session::token_matches(state, token) {
        return Ok(Some(Caller {
            principal: Principal::bootstrap(),
            token_name: None,
            csrf: None,
        }));
    }
    if let Some(wait) = crate::limits::token_blocked(state, source).await {
        return Err(ApiError::TooManyRequests {
            reason: "too many invalid tokens from this address; wait and try again".to_owned(),
            retry_after_s: wait,
        });
    }
    match people::check_token(&state.db, token).await? {
        TokenCheck::Valid {
            principal,
            token_name,
        } => Ok(Some(Caller {
            principal,
            token_name: Some(token_name),
            csrf: None,
        })),
        TokenCheck::Refused {
            token_id,
            owner_id,
            owner_name,
            why,
        } => {
            let entry = people::Audit {
                actor_kind: "token",
                actor_id: Some(owner_id),
                actor_name: owner_name,
                action: "token_refused".to_owned(),
                resource: None,
                status: 401,
                source: source.map(str::to_owned),
                request_id: None,
                detail: Some(serde_json::json!({"token_id": token_id, "why": why})),
            };
            people::record(&state.db, entry).await?;
            Ok(None)
        }
        TokenCheck::Unknown => {
            crate::limits::token_failed(state, source).await;
            Ok(None)
        }
    }
}

/// The console page a browser's navigation to an API address stands for: `GET` asking for HTML
/// first (`Accept: text/html…`, as browsers send on navigation; curl and API clients do not), to
/// a collection the console has (`/devices`, `/runs/{id}`, …); else the overview. `None` for
/// anything but such a navigation, or a request that presented a token.
fn console_page_for(request: &Request) -> Option<String> {
    const PAGES: [&str; 6] = [
        "devices",
        "runs",
        "jobs",
        "schedules",
        "credentials",
        "webhooks",
    ];
    let accepts_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/html"));
    if request.method() != Method::GET
        || !accepts_html
        || request.headers().contains_key(header::AUTHORIZATION)
    {
        return None;
    }
    let mut segments = request.uri().path().trim_matches('/').split('/');
    let page = match (segments.next(), segments.next(), segments.next()) {
        (Some(kind), None, None) if PAGES.contains(&kind) => format!("/console/{kind}"),
        // A device's, run's or job's own page; other kinds' pages are their edit forms.
        (Some(kind @ ("devices" | "runs" | "jobs")), Some(id), None)
            if uuid::Uuid::parse_str(id).is_ok() =>
        {
            format!("/console/{kind}/{id}")
        }
        _ => "/".to_owned(),
    };
    Some(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_has_two_rules() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} has two rules",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn the_console_asks_what_the_api_asks_for_the_same_thing() {
        use crate::console::coverage::COVERED;
        for covered in COVERED {
            let api = rule(&covered.method.parse().expect("method"), covered.path)
                .unwrap_or_else(|| panic!("{} {} has no rule", covered.method, covered.path));
            let console_path = shape(covered.console_path);
            let console = RULES
                .iter()
                .find(|r| r.method == covered.console_method && shape(r.path) == console_path)
                .unwrap_or_else(|| {
                    panic!(
                        "{} {} has no rule",
                        covered.console_method, covered.console_path
                    )
                });
            // Never more open than the API; a console page that shows a form for a change
            // (the credential edit form for `GET /credentials/{id}`) may need what the change
            // needs.
            assert!(
                console.need >= api.need,
                "{} {} and {} {}",
                covered.method,
                covered.path,
                covered.console_method,
                covered.console_path
            );
        }
    }

    /// A path with its parameters' names and its query dropped: `/console/devices/{}`.
    fn shape(path: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for c in path.split('?').next().unwrap_or_default().chars() {
            match c {
                '{' => {
                    inside = true;
                    out.push_str("{}");
                }
                '}' => inside = false,
                _ if !inside => out.push(c),
                _ => {}
            }
        }
        out
    }
}
