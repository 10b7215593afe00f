//! The `[oauth.NAME]` tables: the identity providers roomcast signs users in
//! with (the OAuth 2.0 code flow with PKCE, see `crate::auth::oauth`). Each
//! names the provider's issuer, roomcast's client id and secret there, the
//! callback the provider sends users back to, the scopes asked for and,
//! optionally, the provider's endpoints (else they are discovered from
//! `<issuer>/.well-known/openid-configuration` on first use).
//!
//! This module owns how those tables are read from the settings file, how
//! `ROOMCAST_OAUTH_<NAME>_SECRET` overrides a table's secret, and the checks
//! on every value: a provider's URLs end up in redirects and in requests
//! roomcast makes, so each is held to `https://` (or `http://` to a loopback
//! host, for tests and local providers), without user info, fragment,
//! spaces or control characters.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::cluster::{take, KeyOf};
use super::ConfigError;

/// Providers in the file.
pub const MAX_PROVIDERS: usize = 16;
/// Longest provider name.
pub const NAME_BYTES: usize = 32;
/// Longest URL (issuer, endpoint, callback).
pub const URL_BYTES: usize = 512;
/// Longest client id or secret.
pub const CLIENT_BYTES: usize = 512;
/// Scopes per provider, and the longest one.
pub const MAX_SCOPES: usize = 16;
pub const SCOPE_BYTES: usize = 64;

/// How roomcast proves itself at the token endpoint (the OpenID names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (the default).
    SecretBasic,
    /// `client_id` and `client_secret` in the form body.
    SecretPost,
    /// A public client: `client_id` in the body, no secret (PKCE alone).
    None,
}

impl ClientAuth {
    fn parse(s: &str) -> Option<ClientAuth> {
        match s {
            "client_secret_basic" => Some(ClientAuth::SecretBasic),
            "client_secret_post" => Some(ClientAuth::SecretPost),
            "none" => Some(ClientAuth::None),
            _ => None,
        }
    }
}

/// A client secret; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(pub String);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// One configured provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OauthProvider {
    /// The table's name: 1 to 32 bytes of `[a-z0-9-]`; it is the
    /// `/v1/auth/oauth/<name>/` path segment and the prefix of the user
    /// names of its new users.
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    pub client_auth: ClientAuth,
    /// roomcast's callback as registered with the provider:
    /// `.../v1/auth/oauth/<name>/callback`.
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Each `None` is discovered.
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
}

impl OauthProvider {
    /// The environment variable that overrides this provider's secret.
    pub fn secret_env(name: &str) -> String {
        format!("{}OAUTH_{}_SECRET", super::ENV_PREFIX, name.to_ascii_uppercase().replace('-', "_"))
    }

    /// Whether every endpoint is configured (no discovery needed).
    pub fn endpoints_given(&self) -> bool {
        self.authorization_endpoint.is_some() && self.token_endpoint.is_some() && self.userinfo_endpoint.is_some()
    }

    /// Every check on this provider; the first problem is the one reported,
    /// named `oauth.<name>.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("oauth.{}.{k}", self.name);
        check_name(&self.name).map_err(|p| ConfigError::setting(format!("oauth.{}", self.name.escape_debug()), p))?;
        check_url(&self.issuer, false).map_err(|p| ConfigError::setting(key("issuer"), p))?;
        for (k, v) in [
            ("authorization-endpoint", &self.authorization_endpoint),
            ("token-endpoint", &self.token_endpoint),
            ("userinfo-endpoint", &self.userinfo_endpoint),
        ] {
            if let Some(url) = v {
                check_url(url, true).map_err(|p| ConfigError::setting(key(k), p))?;
            }
        }
        check_url(&self.redirect_uri, false).map_err(|p| ConfigError::setting(key("redirect-uri"), p))?;
        let callback = format!("/v1/auth/oauth/{}/callback", self.name);
        if !self.redirect_uri.ends_with(&callback) {
            return Err(ConfigError::setting(
                key("redirect-uri"),
                format!("must be roomcast's callback, ending in {callback}"),
            ));
        }
        check_token(&self.client_id).map_err(|p| ConfigError::setting(key("client-id"), p))?;
        match (&self.client_secret, self.client_auth) {
            (Some(s), _) => check_token(&s.0).map_err(|p| ConfigError::setting(key("client-secret"), p))?,
            (None, ClientAuth::None) => {}
            (None, _) => {
                let problem = format!(
                    "missing: set {} (or `client-secret` in [oauth.{}]), or client-auth = \"none\" for a public client",
                    OauthProvider::secret_env(&self.name),
                    self.name
                );
                return Err(ConfigError::setting(key("client-secret"), problem));
            }
        }
        if self.scopes.is_empty() || self.scopes.len() > MAX_SCOPES {
            return Err(ConfigError::setting(key("scopes"), format!("must list 1 to {MAX_SCOPES} scopes")));
        }
        for s in &self.scopes {
            let ok = !s.is_empty()
                && s.len() <= SCOPE_BYTES
                && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !ok {
                let problem =
                    format!("scope {s:?} must be 1 to {SCOPE_BYTES} printable ASCII bytes without space, '\"' or '\\'");
                return Err(ConfigError::setting(key("scopes"), problem));
            }
        }
        Ok(())
    }
}

/// The checks on every provider, and on their number.
pub fn validate(providers: &[OauthProvider]) -> Result<(), ConfigError> {
    if providers.len() > MAX_PROVIDERS {
        return Err(ConfigError::setting("oauth", format!("at most {MAX_PROVIDERS} providers")));
    }
    providers.iter().try_for_each(OauthProvider::validate)
}

/// A provider name: 1 to 32 bytes of `[a-z0-9-]`, so that it is one path
/// segment, one environment variable name and a safe user name prefix.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("a provider name must be 1 to {NAME_BYTES} bytes of a-z, 0-9 and '-'"))
    }
}

/// A client id or secret: 1 to 512 printable ASCII bytes without space.
fn check_token(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > CLIENT_BYTES || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("must be 1 to {CLIENT_BYTES} printable ASCII bytes without space"));
    }
    Ok(())
}

/// Whether `host` (as written in a URL) is a loopback host.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A URL roomcast sends users to or requests: `https://host[:port]/path`
/// or `http://` to a loopback host; at most 512 printable ASCII bytes, no
/// user info, no fragment, and a query only where `query_ok`.
pub fn check_url(url: &str, query_ok: bool) -> Result<(), String> {
    if url.len() > URL_BYTES || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{url:?} must be at most {URL_BYTES} printable ASCII bytes without space"));
    }
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(format!("{url:?} must start with https:// (or http:// to a loopback host)")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?} must name a host, without user info"));
    }
    if url.contains('#') {
        return Err(format!("{url:?} must not have a fragment"));
    }
    if !query_ok && url.contains('?') {
        return Err(format!("{url:?} must not have a query"));
    }
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, tail)) => (h, Some(tail.strip_prefix(':').unwrap_or("bad"))),
            None => return Err(format!("{url:?} has an unclosed '['")),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(format!("{url:?} has a bad port"));
    }
    if host.is_empty() {
        return Err(format!("{url:?} must name a host"));
    }
    if !https && !is_loopback_host(host) {
        return Err(format!("{url:?} must use https:// (http:// only to a loopback host)"));
    }
    Ok(())
}

/// The keys of one `[oauth.NAME]` table.
const KEYS: &[&str] = &[
    "issuer",
    "client-id",
    "client-secret",
    "client-auth",
    "redirect-uri",
    "scopes",
    "authorization-endpoint",
    "token-endpoint",
    "userinfo-endpoint",
];

/// The `[oauth]` table as the file has it: provider name to its table.
#[derive(Debug, Default)]
pub(crate) struct OauthTable(pub BTreeMap<String, OauthProvider>);

impl OauthTable {
    /// The providers, with each `ROOMCAST_OAUTH_<NAME>_SECRET` from `env`
    /// overriding its table's secret. Nothing is checked here; see
    /// [`validate`].
    pub fn build(self, env: &dyn Fn(&str) -> Option<String>) -> Vec<OauthProvider> {
        self.0
            .into_values()
            .map(|mut p| {
                if let Some(secret) = env(&OauthProvider::secret_env(&p.name)).filter(|s| !s.is_empty()) {
                    p.client_secret = Some(ClientSecret(secret));
                }
                p
            })
            .collect()
    }
}

impl<'de> Deserialize<'de> for OauthTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OauthTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[oauth.NAME] tables, one per provider")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OauthTable, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.len() == MAX_PROVIDERS {
                        return Err(de::Error::custom(format_args!("at most {MAX_PROVIDERS} [oauth] providers")));
                    }
                    check_name(&name)
                        .map_err(|p| de::Error::custom(format_args!("[oauth.{}]: {p}", name.escape_debug())))?;
                    let entry: Entry = map.next_value()?;
                    let p = entry.into_provider(&name).map_err(de::Error::custom)?;
                    out.insert(name, p);
                }
                Ok(OauthTable(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One `[oauth.NAME]` table before it has a name.
#[derive(Default)]
struct Entry {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_auth: Option<String>,
    redirect_uri: Option<String>,
    scopes: Option<Vec<String>>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
}

impl Entry {
    fn into_provider(self, name: &str) -> Result<OauthProvider, String> {
        let missing = |k: &str| format!("[oauth.{name}] needs `{k}`");
        let client_auth = match self.client_auth.as_deref() {
            None => ClientAuth::SecretBasic,
            Some(s) => ClientAuth::parse(s).ok_or_else(|| {
                format!(
                    "[oauth.{name}] client-auth {:?} is not one of client_secret_basic, client_secret_post, none",
                    s.escape_debug().to_string()
                )
            })?,
        };
        Ok(OauthProvider {
            name: name.to_string(),
            issuer: self.issuer.ok_or_else(|| missing("issuer"))?,
            client_id: self.client_id.ok_or_else(|| missing("client-id"))?,
            client_secret: self.client_secret.map(ClientSecret),
            client_auth,
            redirect_uri: self.redirect_uri.ok_or_else(|| missing("redirect-uri"))?,
            scopes: self.scopes.unwrap_or_else(|| vec!["openid".to_string()]),
            authorization_endpoint: self.authorization_endpoint,
            token_endpoint: self.token_endpoint,
            userinfo_endpoint: self.userinfo_endpoint,
        })
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an [oauth.NAME] table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
                const TABLE: &str = "[oauth.NAME]";
                let mut e = Entry::default();
                while let Some(i) = map.next_key_seed(KeyOf { keys: KEYS, table: TABLE })? {
                    let key = KEYS.get(i).copied().unwrap_or("");
                    match i {
                        0 => take(&mut map, &mut e.issuer, key, TABLE)?,
                        1 => take(&mut map, &mut e.client_id, key, TABLE)?,
                        2 => take(&mut map, &mut e.client_secret, key, TABLE)?,
                        3 => take(&mut map, &mut e.client_auth, key, TABLE)?,
                        4 => take(&mut map, &mut e.redirect_uri, key, TABLE)?,
                        5 => take(&mut map, &mut e.scopes, key, TABLE)?,
                        6 => take(&mut map, &mut e.authorization_endpoint, key, TABLE)?,
                        7 => take(&mut map, &mut e.token_endpoint, key, TABLE)?,
                        _ => take(&mut map, &mut e.userinfo_endpoint, key, TABLE)?,
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<OauthProvider>, String> {
        #[derive(serde::Deserialize)]
        struct File {
            oauth: OauthTable,
        }
        let f: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let env = |k: &str| (k == "ROOMCAST_OAUTH_OP_SECRET").then(|| "from-env".to_string());
        let ps = f.oauth.build(&env);
        validate(&ps).map_err(|e| e.to_string())?;
        Ok(ps)
    }

    const GOOD: &str = r#"
        [oauth.op]
        issuer = "http://127.0.0.1:9000"
        client-id = "roomcast"
        redirect-uri = "http://127.0.0.1:8080/v1/auth/oauth/op/callback"
    "#;

    #[test]
    fn a_provider_reads_with_defaults_and_the_env_secret() {
        let ps = parse(GOOD).unwrap();
        assert_eq!(ps.len(), 1);
        let p = &ps[0];
        assert_eq!(p.client_secret, Some(ClientSecret("from-env".into())));
        assert_eq!(p.client_auth, ClientAuth::SecretBasic);
        assert_eq!(p.scopes, ["openid"]);
        assert!(!p.endpoints_given());
        assert!(!format!("{p:?}").contains("from-env"));
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"http://idp.example\""),
            ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"ftp://idp.example\""),
            ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"https://u@idp.example\""),
            ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"https://idp.example/#x\""),
            ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"https://idp.example:0\""),
            ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"https://idp .example\""),
            ("/v1/auth/oauth/op/callback", "/v1/auth/oauth/other/callback"),
            ("client-id = \"roomcast\"", "client-id = \"\""),
            ("client-id = \"roomcast\"", "client-id = \"roomcast\"\nclient_id = \"x\""),
            ("client-id = \"roomcast\"", "client-id = \"roomcast\"\ncolor = \"x\""),
            ("client-id = \"roomcast\"", "client-id = \"roomcast\"\nscopes = []"),
            ("client-id = \"roomcast\"", "client-id = \"roomcast\"\nscopes = [\"a b\"]"),
            ("client-id = \"roomcast\"", "client-id = \"roomcast\"\nclient-auth = \"magic\""),
            ("client-id = \"roomcast\"", "client-id = \"roomcast\"\ntoken-endpoint = \"http://evil.test/t\""),
            ("[oauth.op]", "[oauth.Op]"),
            ("client-id = \"roomcast\"\n", ""),
        ];
        for (from, to) in cases {
            let text = GOOD.replace(from, to);
            assert!(parse(&text).is_err(), "accepted: {text}");
        }
        // Without the environment's secret, a confidential client needs one.
        let other = GOOD.replace("oauth.op]", "oauth.op2]").replace("/op/", "/op2/");
        let e = parse(&other).unwrap_err();
        assert!(e.contains("ROOMCAST_OAUTH_OP2_SECRET"), "{e}");
        let public = other.replace("client-id", "client-auth = \"none\"\nclient-id");
        assert!(parse(&public).is_ok());
    }

    #[test]
    fn urls() {
        for ok in
            ["https://idp.example", "https://idp.example:8443/realms/x", "http://localhost:1/x", "http://[::1]:9/"]
        {
            assert_eq!(check_url(ok, false), Ok(()), "{ok}");
        }
        assert!(check_url("https://idp.example/auth?x=1", true).is_ok());
        assert!(check_url("https://idp.example/auth?x=1", false).is_err());
        for bad in ["http://10.0.0.1/", "https://", "https:///x", "http://127.0.0.1:99999/", "https://a\u{7f}b"] {
            assert!(check_url(bad, true).is_err(), "{bad}");
        }
    }
}
