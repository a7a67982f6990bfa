//! Bearer-token authentication, for the store's client API, its peer API, and (reused by the
//! control plane) the API server. A listener without a token may only listen on loopback:
//! [`check_listen`] refuses anything else, so an unauthenticated API is never reachable from
//! another host. Tokens are compared in constant time. Owns no routes; it only wraps them.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Shortest token accepted (bytes).
pub const MIN_TOKEN_LEN: usize = 16;

/// A shared secret; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from text (surrounding whitespace and a trailing newline are ignored).
    pub fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "a token must be at least {MIN_TOKEN_LEN} characters (try: openssl rand -hex 32)"
            ));
        }
        if !t.chars().all(|c| c.is_ascii_graphic()) {
            return Err("a token must be printable ASCII without spaces".into());
        }
        Ok(Token(t.into()))
    }

    /// Reads a token file.
    pub fn from_file(path: &std::path::Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Token::new(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    /// The token's text (for the etcd API, whose `Authenticate` hands it back to a client
    /// that proved it knows it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> Result<HeaderValue, String> {
        HeaderValue::from_str(&format!("Bearer {}", self.0)).map_err(|e| e.to_string())
    }

    /// True if `header` is `Bearer <this token>`; constant time in the token's length.
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|given| self.matches(given))
    }

    /// True if `given` is this token; constant time in the token's length.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (given.as_bytes(), self.0.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, want) in b.iter().enumerate() {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ want);
        }
        diff == 0
    }
}

/// True if every address `addr` (`host:port`) resolves to is a loopback address.
pub fn is_loopback(addr: &str) -> bool {
    let resolved: Vec<SocketAddr> = match addr.to_socket_addrs() {
        Ok(it) => it.collect(),
        Err(_) => return false,
    };
    !resolved.is_empty() && resolved.iter().all(|a| is_loopback_ip(a.ip()))
}

fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses to serve an API without a token anywhere but on loopback.
pub fn check_listen(
    what: &str,
    addr: &str,
    token: Option<&Token>,
    flag: &str,
) -> Result<(), String> {
    if token.is_none() && !is_loopback(addr) {
        return Err(format!(
            "the {what} would listen on {addr} without authentication: give it {flag} (a shared \
             secret; clients send it as `Authorization: Bearer <token>`) or listen on loopback"
        ));
    }
    Ok(())
}

/// What the middleware needs: the token, and paths that stay open (health checks).
#[derive(Clone, Debug)]
pub struct Guard {
    pub token: Option<Token>,
    pub open_paths: &'static [&'static str],
}

/// axum middleware: 401 with a JSON body unless the request carries the token. Nothing
/// behind it runs for a refused request.
pub async fn require_token(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let Some(token) = &guard.token else {
        return next.run(req).await;
    };
    if guard.open_paths.contains(&req.uri().path())
        || token.accepts(req.headers().get(header::AUTHORIZATION))
    {
        return next.run(req).await;
    }
    let missing = req.headers().get(header::AUTHORIZATION).is_none();
    let body = serde_json::json!({
        "error": "unauthorized",
        "message": if missing {
            "this API needs a bearer token: send `Authorization: Bearer <token>`"
        } else {
            "the bearer token is not this cluster's"
        },
    });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_exactly() {
        let t = Token::new("0123456789abcdef\n").expect("valid");
        let hv = |s: &str| HeaderValue::from_str(s).expect("header");
        assert!(t.accepts(Some(&hv("Bearer 0123456789abcdef"))));
        assert!(!t.accepts(Some(&hv("Bearer 0123456789abcdeF"))));
        assert!(!t.accepts(Some(&hv("Bearer 0123456789abcde"))));
        assert!(!t.accepts(Some(&hv("Bearer 0123456789abcdef0"))));
        assert!(!t.accepts(Some(&hv("Basic 0123456789abcdef"))));
        assert!(!t.accepts(None));
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space in it ok").is_err());
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn only_loopback_goes_without_a_token() {
        assert!(is_loopback("127.0.0.1:2379"));
        assert!(is_loopback("127.0.0.2:2379"));
        assert!(is_loopback("[::1]:2379"));
        assert!(is_loopback("localhost:2379"));
        assert!(!is_loopback("0.0.0.0:2379"));
        assert!(!is_loopback("[::]:2379"));
        assert!(!is_loopback("10.1.2.3:2379"));
        assert!(!is_loopback("not an address"));
        assert!(check_listen("API", "0.0.0.0:1", None, "--token-file").is_err());
        let t = Token::new("0123456789abcdef").ok();
        assert!(check_listen("API", "0.0.0.0:1", t.as_ref(), "--token-file").is_ok());
        assert!(check_listen("API", "127.0.0.1:1", None, "--token-file").is_ok());
    }
}
