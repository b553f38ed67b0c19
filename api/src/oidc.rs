//! Signing in with OpenID Connect: the providers configured in `NETCRON_OIDC_PROVIDERS`, and
//! the two halves of the authorization code flow (PKCE S256, `state`, `nonce`) that the
//! console's sign-in routes call ([`crate::console`]'s `oidc` module).
//!
//! The `openidconnect` crate does the protocol: discovery, the token request, and the ID
//! token's checks (signature against the provider's JWKS, issuer, audience, expiry with no
//! leeway, nonce). This module keeps each provider's discovery document and keys, fetched at
//! the first sign-in and kept; when an ID token names a key (`kid`) the cached set lacks (the
//! provider rotated its keys, or restarted with new ones), the set is fetched once more.
//!
//! Architecture invariant: no token, code, PKCE verifier or client secret reaches a log line,
//! a page or an error message; errors name what failed, never the values.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use netcron_common::secret::SecretString;
use netcron_services::people::Role;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IssuerUrl, JsonWebKey as _, JsonWebKeySet, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

/// One provider as configured.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderSettings {
    id: String,
    name: String,
    issuer: String,
    client_id: String,
    client_secret: SecretString,
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_role_claim")]
    role_claim: String,
    /// Claim value → role; a person gets the highest role among their values.
    #[serde(default)]
    roles: BTreeMap<String, Role>,
    /// The role of a person none of whose values is mapped; none refuses them.
    #[serde(default)]
    default_role: Option<Role>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "groups"]
        .map(str::to_owned)
        .to_vec()
}

fn default_role_claim() -> String {
    "groups".to_owned()
}

/// A configured provider and what has been learnt from it.
pub struct Provider {
    settings: ProviderSettings,
    issuer: IssuerUrl,
    /// Discovery document and keys, fetched at first use.
    metadata: RwLock<Option<CoreProviderMetadata>>,
}

impl Provider {
    /// The id in URLs (`/console/sign-in/oidc/{id}`) and audit entries.
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// The name people see: "Sign in with Corp SSO".
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The issuer, as its ID tokens state it.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }
}

/// Every configured provider (none when `NETCRON_OIDC_PROVIDERS` is unset), with the HTTP
/// client that talks to them. Cloning is cheap.
#[derive(Clone)]
pub struct Providers {
    list: Arc<[Provider]>,
    http: reqwest::Client,
}

impl Default for Providers {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|p| (p.id(), p.issuer())))
            .finish()
    }
}

impl Providers {
    fn new(list: Vec<Provider>) -> Self {
        // No redirects: a provider's endpoints answer directly, and following one could take
        // the server somewhere the configuration never named. The timeout bounds a sign-in
        // whose provider hangs.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            list: list.into(),
            http,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.list.iter()
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.id() == id)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl FromStr for Providers {
    type Err = String;

    /// The JSON array of `NETCRON_OIDC_PROVIDERS`: unknown fields, unknown roles, a malformed
    /// issuer, a duplicate or unusable id and a provider without the `openid` scope are refused.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed: Vec<ProviderSettings> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                format!("at `{path}`: {}", e.into_inner())
            })?;
        let mut list: Vec<Provider> = Vec::with_capacity(parsed.len());
        for settings in parsed {
            let id = &settings.id;
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!(
                    "provider id `{id}` must be 1 to 64 of a-z, 0-9 and -"
                ));
            }
            if list.iter().any(|p| p.id() == id) {
                return Err(format!("provider id `{id}` appears twice"));
            }
            if settings.name.trim().is_empty() {
                return Err(format!("provider `{id}` needs a name"));
            }
            if !settings.scopes.iter().any(|s| s == "openid") {
                return Err(format!("provider `{id}`: scopes must include `openid`"));
            }
            let issuer = IssuerUrl::new(settings.issuer.clone())
                .map_err(|e| format!("provider `{id}`: issuer is not a URL ({e})"))?;
            if !matches!(issuer.url().scheme(), "http" | "https") {
                return Err(format!("provider `{id}`: issuer must be http or https"));
            }
            list.push(Provider {
                settings,
                issuer,
                metadata: RwLock::new(None),
            });
        }
        Ok(Self::new(list))
    }
}

/// Every claim of the ID token that `openidconnect` does not model, so that the configured
/// role claim can be any of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for OtherClaims {}

type TokenFields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<TokenFields, CoreTokenType>;
type Client = openidconnect::Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in through a provider did not happen. Its `Display` is what the person is told
/// (and what the audit entry records); it never holds a token or a code.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0} could not be reached or answered something unusable; try again later")]
    Unreachable(String),
    #[error("{0} did not accept netcron's sign-in request ({1})")]
    Exchange(String, String),
    #[error(
        "the ID token from {0} does not match this sign-in (wrong nonce): it was not issued for the sign-in this browser started; sign in again"
    )]
    Nonce(String),
    #[error(
        "the ID token from {0} has expired; check that the clocks of netcron and the provider agree, then sign in again"
    )]
    Expired(String),
    #[error("the ID token from {0} was refused: {1}")]
    Token(String, String),
    #[error("your account at {0} has no netcron role; ask an admin to map one of your groups")]
    NoRole(String),
}

/// What a sign-in sends to the provider, and what the callback needs to finish it.
pub struct Start {
    /// Where the browser goes: the provider's authorization endpoint with every parameter.
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// Who the provider says signed in, after every check.
#[derive(Debug)]
pub struct Verified {
    pub subject: String,
    /// `preferred_username`, else the e-mail address, else `sub`.
    pub name: String,
    pub display_name: String,
    pub role: Role,
}

impl Provider {
    /// The discovery document (with the keys), fetched once and kept.
    async fn metadata(&self, http: &reqwest::Client) -> Result<CoreProviderMetadata, Refusal> {
        if let Some(known) = self.metadata.read().await.as_ref() {
            return Ok(known.clone());
        }
        let fetched = CoreProviderMetadata::discover_async(self.issuer.clone(), http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = self.id(), error = %e, "OpenID Connect discovery failed");
                Refusal::Unreachable(self.name().to_owned())
            })?;
        *self.metadata.write().await = Some(fetched.clone());
        Ok(fetched)
    }

    /// The keys again, after a token named one the kept set lacks.
    async fn refresh_keys(
        &self,
        http: &reqwest::Client,
        mut metadata: CoreProviderMetadata,
    ) -> Result<CoreProviderMetadata, Refusal> {
        let keys = JsonWebKeySet::fetch_async(metadata.jwks_uri(), http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = self.id(), error = %e, "fetching the provider's keys failed");
                Refusal::Unreachable(self.name().to_owned())
            })?;
        metadata = metadata.set_jwks(keys);
        *self.metadata.write().await = Some(metadata.clone());
        Ok(metadata)
    }

    fn client(&self, metadata: CoreProviderMetadata, redirect: &str) -> Result<Client, Refusal> {
        let redirect = RedirectUrl::new(redirect.to_owned())
            .map_err(|e| Refusal::Token(self.name().to_owned(), format!("redirect URI: {e}")))?;
        Ok(Client::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(
                self.settings.client_secret.expose().to_owned(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: a new `state`, `nonce` and PKCE verifier, and the provider's URL.
    ///
    /// # Errors
    /// The provider cannot be reached for its discovery document.
    pub async fn start(&self, http: &reqwest::Client, redirect: &str) -> Result<Start, Refusal> {
        let client = self.client(self.metadata(http).await?, redirect)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Start {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in: redeems the code with the PKCE verifier, verifies the ID token
    /// against `nonce`, and maps its claims to a role.
    ///
    /// # Errors
    /// The provider refused the code, the ID token failed a check, or no role maps.
    pub async fn finish(
        &self,
        http: &reqwest::Client,
        redirect: &str,
        code: String,
        nonce: String,
        verifier: String,
    ) -> Result<Verified, Refusal> {
        let name = || self.name().to_owned();
        let client = self.client(self.metadata(http).await?, redirect)?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| Refusal::Exchange(name(), e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = self.id(), error = %e, "the token request failed");
                Refusal::Exchange(name(), "the token request failed".to_owned())
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| Refusal::Token(name(), "the provider sent no ID token".to_owned()))?;
        let mut metadata = self.metadata(http).await?;
        if let Some(kid) = key_id(&id_token.to_string())
            && !metadata
                .jwks()
                .keys()
                .iter()
                .any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
        {
            metadata = self.refresh_keys(http, metadata).await?;
        }
        let client = self.client(metadata, redirect)?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(nonce))
            .map_err(|e| match e {
                ClaimsVerificationError::InvalidNonce(_) => Refusal::Nonce(name()),
                ClaimsVerificationError::Expired(_) => Refusal::Expired(name()),
                other => Refusal::Token(name(), other.to_string()),
            })?;
        let subject = claims.subject().as_str().to_owned();
        let username = claims
            .preferred_username()
            .map(|u| u.as_str().to_owned())
            .or_else(|| claims.email().map(|e| e.as_str().to_owned()))
            .unwrap_or_else(|| subject.clone());
        let display_name = claims
            .name()
            .and_then(|n| n.get(None))
            .map_or_else(|| username.clone(), |n| n.as_str().to_owned());
        let values = claim_values(claims.additional_claims(), &self.settings.role_claim);
        let role = self
            .role_for(&values)
            .ok_or_else(|| Refusal::NoRole(name()))?;
        Ok(Verified {
            subject,
            name: username,
            display_name,
            role,
        })
    }

    /// The highest role among the mapped claim values, else the default role.
    fn role_for(&self, values: &[String]) -> Option<Role> {
        values
            .iter()
            .filter_map(|v| self.settings.roles.get(v).copied())
            .max()
            .or(self.settings.default_role)
    }
}

/// The `kid` in a JWT's header, if it has one.
fn key_id(jwt: &str) -> Option<String> {
    let header = jwt.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

/// The role claim's values: a string is one value, an array its strings.
fn claim_values(claims: &OtherClaims, claim: &str) -> Vec<String> {
    match claims.other.get(claim) {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse_with_defaults_and_refuse_mistakes() {
        let parsed: Providers = r#"[{"id": "corp", "name": "Corp SSO",
            "issuer": "https://sso.example.net", "client_id": "netcron",
            "client_secret": "s", "roles": {"netcron-admins": "admin", "netops": "operator"}}]"#
            .parse()
            .expect("valid");
        let corp = parsed.get("corp").expect("corp");
        assert_eq!(corp.settings.scopes, default_scopes());
        assert_eq!(corp.settings.role_claim, "groups");
        assert_eq!(
            corp.role_for(&["staff".into(), "netops".into(), "netcron-admins".into()]),
            Some(Role::Admin)
        );
        assert_eq!(corp.role_for(&["staff".into()]), None);
        assert!(!format!("{parsed:?}").contains("\"s\""));

        let unknown_field = r#"[{"id": "a", "name": "A", "issuer": "https://a.example",
            "client_id": "c", "client_secret": "s", "role": "admin"}]"#;
        let error = unknown_field.parse::<Providers>().expect_err("refused");
        assert!(error.contains("unknown field `role`"), "{error}");
        let bad_role = r#"[{"id": "a", "name": "A", "issuer": "https://a.example",
            "client_id": "c", "client_secret": "s", "roles": {"g": "root"}}]"#;
        let error = bad_role.parse::<Providers>().expect_err("refused");
        assert!(error.contains("root"), "{error}");
        assert!("{".parse::<Providers>().is_err());
        let twice = r#"[{"id": "a", "name": "A", "issuer": "https://a.example",
            "client_id": "c", "client_secret": "s"},{"id": "a", "name": "A",
            "issuer": "https://a.example", "client_id": "c", "client_secret": "s"}]"#;
        assert!(twice.parse::<Providers>().is_err());
    }

    #[test]
    fn the_role_claim_is_a_string_or_an_array() {
        let claims: OtherClaims =
            serde_json::from_str(r#"{"groups": ["a", "b"], "role": "c"}"#).expect("claims");
        assert_eq!(claim_values(&claims, "groups"), ["a", "b"]);
        assert_eq!(claim_values(&claims, "role"), ["c"]);
        assert!(claim_values(&claims, "missing").is_empty());
    }
}
