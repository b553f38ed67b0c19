//! The operator console: server-rendered HTML pages (askama templates in `api/templates/`) over
//! the same services as the REST API, at `/` and `/console/…`.
//!
//! Architecture invariants:
//! - Every page reads and every form writes through `crate::services` (forms become the REST
//!   API's own request bodies, see [`forms`]), so the console has no rules of its own.
//! - Nothing is loaded from elsewhere: htmx and the console's script and stylesheet are
//!   embedded in the binary, and the Content-Security-Policy allows only this origin, no inline
//!   script or style, and no framing.
//! - A state-changing request needs a session cookie *and* that session's CSRF token
//!   ([`session::Action`]).

mod admin;
mod bulk;
pub mod coverage;
mod deletes;
mod devices;
mod forms;
mod jobs;
mod next;
mod oidc;
mod overview;
mod people;
mod runs;
mod schedules;
pub mod session;
mod view;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// What every signed-in page shows around its content.
pub struct Chrome {
    pub csrf: String,
    /// Who is signed in, and as what: `alice · operator`.
    pub who: String,
    /// Whether the navigation offers the admins' pages (people, audit).
    pub admin: bool,
    /// The navigation entry to mark as current.
    pub section: &'static str,
    /// What the last action did, shown above the content (`Deleted device sw1.`).
    pub notice: Option<String>,
}

impl Chrome {
    pub fn new(operator: &session::Operator, section: &'static str) -> Self {
        let principal = &operator.caller.principal;
        Self {
            csrf: operator.csrf.clone(),
            who: format!("{} · {}", principal.name, principal.role),
            admin: principal.role == netcron_services::people::Role::Admin,
            section,
            notice: None,
        }
    }

    /// The same, with the notice a redirect asked for (`?deleted=…`).
    pub fn noticed(mut self, notice: &Notice) -> Self {
        self.notice = notice.text();
        self
    }
}

/// The query parameter that a redirect after a delete adds, for the page to say what went.
#[derive(Deserialize, Default)]
pub struct Notice {
    deleted: Option<String>,
}

impl Notice {
    fn text(&self) -> Option<String> {
        let deleted = self.deleted.as_deref()?.trim();
        // A link can carry any text, so the notice stays short and is only ever text.
        (!deleted.is_empty())
            .then(|| format!("Deleted {}.", deleted.chars().take(300).collect::<String>()))
    }
}

/// An error shown as an HTML page (the REST API shows the same error as problem+json).
pub struct Shown(pub ApiError);

impl From<netcron_services::Error> for Shown {
    fn from(e: netcron_services::Error) -> Self {
        Self(e.into())
    }
}

impl From<ApiError> for Shown {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<sea_orm::DbErr> for Shown {
    fn from(e: sea_orm::DbErr) -> Self {
        Self(e.into())
    }
}

#[derive(askama::Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    status: u16,
    title: &'static str,
    detail: String,
}

impl IntoResponse for Shown {
    fn into_response(self) -> Response {
        let (status, _, title) = self.0.parts();
        let detail = match &self.0 {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "console request failed");
                "The server failed to handle this request; the cause has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title,
            detail,
        };
        let body = askama::Template::render(&page)
            .unwrap_or_else(|_| format!("{} {title}", status.as_u16()));
        (status, Html(body)).into_response()
    }
}

pub type Result<T, E = Shown> = std::result::Result<T, E>;

/// Renders a template as a page; a template that fails to render is a 500.
pub fn render<T: askama::Template>(template: &T) -> Result<Response> {
    template
        .render()
        .map(|html| Html(html).into_response())
        .map_err(|e| {
            Shown(ApiError::Internal(
                anyhow::Error::new(e).context("rendering a page"),
            ))
        })
}

/// Renders a form page: 422 when the form came back with an error, so scripts and tests can
/// tell a refusal from a page.
pub fn render_form<T: askama::Template>(template: &T, failed: bool) -> Result<Response> {
    let mut response = render(template)?;
    if failed {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

/// After a successful form post, the browser is sent to the page that shows the result (so a
/// reload does not post twice).
pub fn see_other(location: &str) -> Response {
    // `Redirect::to` panics on a value that cannot be a header; a location that cannot be
    // one (it never comes from input unchecked) leads home instead.
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => Redirect::to("/").into_response(),
    }
}

/// The console's routes. The signed-out pages (sign-in, assets) need no session; every other
/// handler takes a [`session::Operator`] or [`session::Action`], which send a signed-out
/// browser to sign in.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::show))
        .route("/console", get(|| async { Redirect::to("/") }))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-in/oidc/{provider}", get(oidc::start))
        .route(
            "/console/sign-in/oidc/{provider}/callback",
            get(oidc::callback),
        )
        .route("/console/sign-out", post(sign_out))
        .route("/console/assets/{name}", get(asset))
        // Browsers ask for /favicon.ico on their own, whatever the page links.
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/console/assets/favicon.svg") }),
        )
        .merge(devices::router())
        .merge(bulk::router())
        .merge(jobs::router())
        .merge(schedules::router())
        .merge(runs::router())
        .merge(admin::router())
        .merge(deletes::router())
        .merge(people::router())
        .layer(from_fn(secure_headers))
}

/// Headers of every console response: a strict CSP (scripts, styles, images and connections
/// from this origin only; no inline code; no framing), no sniffing, no referrer leaving the
/// origin, and no caching of pages that show data.
async fn secure_headers(request: axum::extract::Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/console/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The embedded static files. htmx comes unmodified from its npm package (`htmx.org` 2.0.11,
/// BSD-0), so no page ever asks a CDN for it.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../assets/favicon.svg"),
    ),
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/htmx-2.0.11.min.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/console.css"),
    ),
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => Shown(ApiError::RouteNotFound).into_response(),
    }
}

#[derive(askama::Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    next: String,
    error: Option<String>,
    providers: Vec<ProviderLink>,
}

/// A "Sign in with …" link of the sign-in page.
struct ProviderLink {
    href: String,
    name: String,
}

impl SignInPage {
    /// The page, offering every configured OpenID Connect provider, returning to `next`.
    fn new(state: &AppState, next: &next::ReturnPath, error: Option<String>) -> Self {
        let next = next.as_str().to_owned();
        let query = form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
        let providers = state
            .oidc
            .iter()
            .map(|p| ProviderLink {
                href: format!("/console/sign-in/oidc/{}?next={query}", p.id()),
                name: p.name().to_owned(),
            })
            .collect();
        Self {
            next,
            error,
            providers,
        }
    }
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

async fn sign_in_page(
    axum::extract::State(state): axum::extract::State<AppState>,
    Query(params): Query<NextParam>,
) -> Result<Response> {
    let next = next::ReturnPath::parse_or_home(params.next.as_deref());
    render(&SignInPage::new(&state, &next, None))
}

/// Signs in with an account's name and password, or with a bootstrap API token, and answers a
/// new session cookie. The secret travels once, in a POST body; it is never put in a URL, a page
/// or a log line. Every attempt is in the audit log (the name typed, never the password), and
/// repeated failures are slowed down per name and per address ([`crate::limits`]).
async fn sign_in(
    axum::extract::State(state): axum::extract::State<AppState>,
    extensions: axum::http::Extensions,
    headers: axum::http::HeaderMap,
    jar: CookieJar,
    body: axum::body::Bytes,
) -> Result<Response> {
    use netcron_common::secret::SecretString;
    use netcron_services::people;
    let form = forms::Fields::parse(&body);
    // Parsed before anything is written, so a refused `next` cannot fail the request after
    // the session exists.
    let next = next::ReturnPath::parse_or_home(form.get("next"));
    let source = crate::access::source(&extensions);
    let token = form.get("token").unwrap_or_default().trim();
    let name = form.get("name").unwrap_or_default().trim();
    let password = SecretString::new(form.get("password").unwrap_or_default());
    let attempt = if token.is_empty() { name } else { "bootstrap" };
    let refused = |status: StatusCode, error: &'static str| -> Result<Response> {
        let mut response = render(&SignInPage::new(&state, &next, Some(error.to_owned())))?;
        *response.status_mut() = status;
        Ok(response)
    };
    if let Some(wait) = crate::limits::sign_in_blocked(&state, attempt, source.as_deref()).await {
        let mut response = refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins; wait a few minutes and try again.",
        )?;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(response);
    }
    let (opener, principal) = if token.is_empty() {
        match people::check_sign_in(&state.db, name, password).await? {
            Some(user) => (
                session::Opener::User(user.id),
                Some((people::ActorKind::User, Some(user.id), user.name)),
            ),
            None => (session::Opener::Token(""), None),
        }
    } else if session::token_matches(&state, token) {
        (
            session::Opener::Token(token),
            Some((people::ActorKind::Bootstrap, None, "bootstrap".to_owned())),
        )
    } else {
        (session::Opener::Token(""), None)
    };
    let Some((kind, user_id, actor_name)) = principal else {
        crate::limits::sign_in_failed(&state, attempt, source.as_deref()).await;
        audit_sign_in(
            &state,
            "sign_in_failed",
            ("anonymous", None, attempt),
            401,
            source,
        )
        .await?;
        return refused(
            StatusCode::UNAUTHORIZED,
            if token.is_empty() {
                "That name and password do not sign in here."
            } else {
                "That token is not one of this server's API tokens."
            },
        );
    };
    let cookie = session::open(
        &state,
        opener,
        state.console_origin.secure_cookies(&headers),
    )
    .await?;
    audit_sign_in(
        &state,
        "sign_in",
        (kind.as_str(), user_id, &actor_name),
        303,
        source,
    )
    .await?;
    Ok((jar.add(cookie), see_other(next.as_str())).into_response())
}

async fn audit_sign_in(
    state: &AppState,
    action: &str,
    (kind, id, name): (&'static str, Option<uuid::Uuid>, &str),
    status: u16,
    source: Option<String>,
) -> Result<()> {
    netcron_services::people::record(
        &state.db,
        netcron_services::people::Audit {
            actor_kind: kind,
            actor_id: id,
            // What was typed is kept short: a password pasted into the name field by mistake
            // should not sit in the log whole.
            actor_name: name.chars().take(64).collect(),
            action: action.to_owned(),
            resource: Some("/console/sign-in".to_owned()),
            status,
            source,
            request_id: None,
            detail: None,
        },
    )
    .await?;
    Ok(())
}

async fn sign_out(
    axum::extract::State(state): axum::extract::State<AppState>,
    jar: CookieJar,
    _action: session::Action,
) -> Result<Response> {
    session::close(&state.db, &jar).await?;
    Ok((
        jar.remove(session::removal()),
        Redirect::to("/console/sign-in"),
    )
        .into_response())
}
