//! Per-registry configuration (mirrors, plain HTTP, credentials) and CRI credentials.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Registry settings keyed by registry host (`docker.io`, `127.0.0.1:5000`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Settings for each registry host.
    pub hosts: BTreeMap<String, HostConfig>,
}

/// Settings for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Hosts tried in order before the registry itself (`mirror.local:5000`, optionally with
    /// `http://` or `https://`).
    pub mirrors: Vec<String>,
    /// Talk plain HTTP to this host instead of HTTPS.
    pub plain_http: bool,
    /// Accept any TLS certificate from this host.
    pub insecure_skip_verify: bool,
    /// Basic auth user name.
    pub username: String,
    /// Basic auth password.
    pub password: String,
    /// base64 of `user:password`, as in a Docker config.
    pub auth: String,
    /// An OAuth2 refresh token exchanged for a bearer token.
    pub identity_token: String,
}

/// Credentials that came with a CRI `PullImage` (its `AuthConfig`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for Basic auth.
    pub username: String,
    /// Password for Basic auth.
    pub password: String,
    /// base64 of `user:password`.
    pub auth: String,
    /// OAuth2 refresh token, exchanged at the registry's token endpoint.
    pub identity_token: String,
    /// A bearer token sent as it is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field(
                "password",
                &(!self.password.is_empty()).then_some("<redacted>"),
            )
            .field("auth", &(!self.auth.is_empty()).then_some("<redacted>"))
            .field(
                "identity_token",
                &(!self.identity_token.is_empty()).then_some("<redacted>"),
            )
            .field(
                "registry_token",
                &(!self.registry_token.is_empty()).then_some("<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    fn from_host(h: &HostConfig) -> Credentials {
        Credentials {
            username: h.username.clone(),
            password: h.password.clone(),
            auth: h.auth.clone(),
            identity_token: h.identity_token.clone(),
            registry_token: String::new(),
        }
    }
}

/// How we authenticate to one registry, once credentials are sorted out.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    Anonymous,
    /// HTTP Basic, or Basic at the token endpoint when the registry wants bearer tokens.
    Basic(String, String),
    /// A bearer token sent as it is.
    Bearer(String),
    /// An OAuth2 refresh token to exchange at the registry's token endpoint.
    IdentityToken { username: String, token: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic(u, _) => write!(f, "Basic({u:?}, <redacted>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::IdentityToken { username, .. } => {
                write!(f, "IdentityToken({username:?}, <redacted>)")
            }
        }
    }
}

impl Auth {
    /// Picks the credentials of a pull: the request's own, else the configured host's.
    /// Precedence inside one set follows containerd: registry token, identity token,
    /// username/password, then `auth`.
    pub fn resolve(
        request: Option<&Credentials>,
        host: Option<&HostConfig>,
        registry: &str,
    ) -> crate::Result<Auth> {
        let from_host = host.map(Credentials::from_host);
        let creds = match request {
            Some(c) if !c.is_empty() => c,
            _ => match &from_host {
                Some(c) => c,
                None => return Ok(Auth::Anonymous),
            },
        };
        if !creds.registry_token.is_empty() {
            return Ok(Auth::Bearer(creds.registry_token.clone()));
        }
        if !creds.identity_token.is_empty() {
            return Ok(Auth::IdentityToken {
                username: creds.username.clone(),
                token: creds.identity_token.clone(),
            });
        }
        if !creds.username.is_empty() {
            return Ok(Auth::Basic(creds.username.clone(), creds.password.clone()));
        }
        if !creds.auth.is_empty() {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(creds.auth.trim())
                .map_err(|e| Error::Unauthorized {
                    reference: registry.to_string(),
                    message: format!("auth is not valid base64: {e}"),
                })?;
            let decoded = String::from_utf8(decoded).map_err(|_| Error::Unauthorized {
                reference: registry.to_string(),
                message: "auth does not decode to UTF-8 text".into(),
            })?;
            let (user, pass) = decoded.split_once(':').ok_or_else(|| Error::Unauthorized {
                reference: registry.to_string(),
                message: "auth must be base64 of user:password".into(),
            })?;
            return Ok(Auth::Basic(user.to_string(), pass.to_string()));
        }
        Ok(Auth::Anonymous)
    }
}

/// A place to pull from: the registry itself or one of its mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Speak plain HTTP.
    pub plain_http: bool,
    /// Skip TLS verification.
    pub insecure: bool,
    /// Whether this is a mirror rather than the registry named in the reference.
    pub mirror: bool,
    /// Tried only when the endpoint before it (the same host over HTTPS) could not be reached
    /// at all: the plain-HTTP fallback for a loopback registry without configuration.
    pub http_fallback: bool,
}

/// Whether `host` (`name[:port]`) is this machine: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:5000`, or `name:port`; a bare `::1` has more than one ':'.
        Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The port of `host`, if it names one.
fn port_of(host: &str) -> Option<&str> {
    let (n, p) = host.rsplit_once(':')?;
    (!p.is_empty()
        && p.chars().all(|c| c.is_ascii_digit())
        && (!n.contains(':') || n.ends_with(']')))
    .then_some(p)
}

impl RegistriesConfig {
    /// The settings for `registry`, if any.
    pub fn host(&self, registry: &str) -> Option<&HostConfig> {
        self.hosts.get(registry)
    }

    /// Endpoints to try for `registry`, mirrors first.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let host = self.hosts.get(registry);
        for m in host.map(|h| h.mirrors.as_slice()).unwrap_or_default() {
            let (plain, name) = if let Some(rest) = m.strip_prefix("http://") {
                (true, rest)
            } else if let Some(rest) = m.strip_prefix("https://") {
                (false, rest)
            } else {
                (
                    self.hosts.get(m.as_str()).is_some_and(|h| h.plain_http),
                    m.as_str(),
                )
            };
            let name = name.trim_end_matches('/').to_string();
            let insecure = self
                .hosts
                .get(&name)
                .is_some_and(|h| h.insecure_skip_verify);
            out.push(Endpoint {
                host: name,
                plain_http: plain,
                insecure,
                mirror: true,
                http_fallback: false,
            });
        }
        if host.is_none() && is_loopback(registry) {
            // As containerd 2.x: a registry on this machine without configuration is tried
            // over HTTPS without verification (it has no certificate anyone signed), and over
            // plain HTTP where HTTPS cannot be spoken, unless its port is 443.
            out.push(Endpoint {
                host: registry.to_string(),
                plain_http: false,
                insecure: true,
                mirror: false,
                http_fallback: false,
            });
            if port_of(registry).is_some_and(|p| p != "443") {
                out.push(Endpoint {
                    host: registry.to_string(),
                    plain_http: true,
                    insecure: false,
                    mirror: false,
                    http_fallback: true,
                });
            }
            return out;
        }
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: host.is_some_and(|h| h.plain_http),
            insecure: host.is_some_and(|h| h.insecure_skip_verify),
            mirror: false,
            http_fallback: false,
        });
        out
    }
}

use crate::Error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_put_mirrors_first() {
        let mut cfg = RegistriesConfig::default();
        cfg.hosts.insert(
            "docker.io".into(),
            HostConfig {
                mirrors: vec!["http://127.0.0.1:5001".into(), "mirror.example:443/".into()],
                ..Default::default()
            },
        );
        let e = cfg.endpoints("docker.io");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].host, "127.0.0.1:5001");
        assert!(e[0].plain_http && e[0].mirror);
        assert_eq!(e[1].host, "mirror.example:443");
        assert!(!e[1].plain_http);
        assert_eq!(e[2].host, "docker.io");
        assert!(!e[2].mirror);
    }

    #[test]
    fn a_loopback_registry_without_configuration_falls_back_to_plain_http() {
        let cfg = RegistriesConfig::default();
        for host in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.0.0.2:80",
        ] {
            let e = cfg.endpoints(host);
            assert_eq!(e.len(), 2, "{host}: {e:?}");
            assert!(
                !e[0].plain_http && e[0].insecure && !e[0].http_fallback,
                "{host}"
            );
            assert!(
                e[1].plain_http && e[1].http_fallback && e[1].host == host,
                "{host}"
            );
        }
        for host in ["localhost", "127.0.0.1:443", "::1"] {
            let e = cfg.endpoints(host);
            assert_eq!(e.len(), 1, "{host}: {e:?}");
            assert!(!e[0].plain_http && e[0].insecure, "{host}");
        }
        for host in ["registry.example:5000", "10.0.0.1:5000", "docker.io"] {
            let e = cfg.endpoints(host);
            assert_eq!(e.len(), 1, "{host}: {e:?}");
            assert!(!e[0].plain_http && !e[0].insecure, "{host}");
        }
        // Configured hosts keep exactly what they say.
        let mut cfg = RegistriesConfig::default();
        cfg.hosts
            .insert("127.0.0.1:5000".into(), HostConfig::default());
        let e = cfg.endpoints("127.0.0.1:5000");
        assert_eq!(e.len(), 1);
        assert!(!e[0].plain_http && !e[0].insecure);
    }

    #[test]
    fn auth_precedence_and_base64() {
        let req = Credentials {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        assert_eq!(
            Auth::resolve(Some(&req), None, "r").expect("auth"),
            Auth::Basic("user".into(), "pass".into())
        );
        let host = HostConfig {
            username: "h".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(
            Auth::resolve(None, Some(&host), "r").expect("auth"),
            Auth::Basic("h".into(), "p".into())
        );
        let tok = Credentials {
            registry_token: "t".into(),
            username: "u".into(),
            ..Default::default()
        };
        assert_eq!(
            Auth::resolve(Some(&tok), Some(&host), "r").expect("auth"),
            Auth::Bearer("t".into())
        );
        let bad = Credentials {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(matches!(
            Auth::resolve(Some(&bad), None, "r"),
            Err(Error::Unauthorized { .. })
        ));
        assert_eq!(
            Auth::resolve(None, None, "r").expect("auth"),
            Auth::Anonymous
        );
    }
}
