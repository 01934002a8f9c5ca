//! Who may call the control API (ARCHITECTURE invariant 11): pure checks on a request's method, peer and
//! headers, so every rule has a unit test and the router only maps the verdict to a response.
//!
//! The API is for operators and their back ends, never for web pages of other sites:
//! - a request from a page of a foreign origin (an `Origin` or `Sec-Fetch-Site` that is not this server's
//!   own) is refused unless the origin is listed in `http.api_cors_origins`;
//! - without `http.api_token`, only loopback clients that name a loopback host are trusted: the `Host` check
//!   stops a DNS-rebinding page, whose requests come from the browser on this host under a name it controls;
//! - with a token, reads and writes need it (`http.api_read_token`, if set, opens reads only);
//! - calls that change something send JSON: a browser can send `text/plain` or a form cross-site without a
//!   preflight, but never `application/json`.

use std::net::IpAddr;

use http::Method;

/// The parts of a request the checks look at.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    pub method: &'a Method,
    pub peer: IpAddr,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

/// The API's access settings (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct ApiPolicy<'a> {
    pub token: &'a str,
    pub read_token: &'a str,
    pub cors_origins: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiRefusal {
    #[error("requests from web pages of origin {0} are refused: list it in http.api_cors_origins to allow it")]
    CrossSite(String),
    #[error("a request from another site (Sec-Fetch-Site: {0}) is refused")]
    CrossSiteFetch(String),
    #[error("the API answers loopback clients only while http.api_token is empty")]
    NotLoopback,
    #[error("Host {0:?} is not a loopback name: while http.api_token is empty the API answers only requests for localhost or a loopback address")]
    NotLoopbackHost(String),
    #[error("this call needs Authorization: Bearer <http.api_token>")]
    Unauthorized,
    #[error("the read-only token (http.api_read_token) cannot change anything: this call needs http.api_token")]
    ReadOnly,
    #[error("calls that change something take Content-Type: application/json, not {0:?}")]
    NotJson(String),
}

impl ApiRefusal {
    /// HTTP status and the `error` code of the JSON answer.
    pub fn status(&self) -> (http::StatusCode, &'static str) {
        use http::StatusCode as S;
        match self {
            ApiRefusal::CrossSite(_) | ApiRefusal::CrossSiteFetch(_) => (S::FORBIDDEN, "cross_site"),
            ApiRefusal::NotLoopback | ApiRefusal::NotLoopbackHost(_) => (S::FORBIDDEN, "forbidden"),
            ApiRefusal::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            ApiRefusal::ReadOnly => (S::FORBIDDEN, "read_only_token"),
            ApiRefusal::NotJson(_) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        }
    }
}

/// Whether a call changes something (anything but GET, HEAD and OPTIONS).
pub fn is_mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `origin` if it is one the API answers with CORS headers.
pub fn allowed_origin<'a>(policy: &ApiPolicy<'_>, origin: Option<&'a str>) -> Option<&'a str> {
    origin.filter(|o| policy.cors_origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// The verdict on one API request.
pub fn check(policy: &ApiPolicy<'_>, r: &ApiRequest<'_>) -> Result<(), ApiRefusal> {
    let listed = allowed_origin(policy, r.origin).is_some();
    if let Some(origin) = r.origin {
        if !listed && !same_origin(origin, r.host) {
            return Err(ApiRefusal::CrossSite(origin.to_owned()));
        }
    }
    if let Some(site) = r.sec_fetch_site {
        // Navigations and no-cors loads (an <img> or a form) carry no Origin on GET but do carry this.
        if !listed && !matches!(site, "same-origin" | "none") {
            return Err(ApiRefusal::CrossSiteFetch(site.to_owned()));
        }
    }
    if policy.token.is_empty() {
        if !r.peer.is_loopback() && !is_mapped_loopback(r.peer) {
            return Err(ApiRefusal::NotLoopback);
        }
        if let Some(host) = r.host {
            if !is_loopback_host(host) {
                return Err(ApiRefusal::NotLoopbackHost(host.to_owned()));
            }
        }
    } else {
        let given = r.authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let full = given.is_some_and(|g| ct_eq(g, policy.token));
        if !full {
            let read = !policy.read_token.is_empty() && given.is_some_and(|g| ct_eq(g, policy.read_token));
            match (read, is_mutating(r.method)) {
                (true, false) => {}
                (true, true) => return Err(ApiRefusal::ReadOnly),
                (false, _) => return Err(ApiRefusal::Unauthorized),
            }
        }
    }
    if is_mutating(r.method) {
        let sends_body = matches!(*r.method, Method::POST | Method::PUT | Method::PATCH);
        match r.content_type {
            Some(ct) if is_json(ct) => {}
            Some(ct) => return Err(ApiRefusal::NotJson(ct.to_owned())),
            None if sends_body => return Err(ApiRefusal::NotJson(String::new())),
            None => {}
        }
    }
    Ok(())
}

fn ct_eq(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// `localhost`, a name under `.localhost`, or a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host);
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of a `Host` header value, without its port (`[::1]:8080` gives `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |h: &str| -> String {
        let name = host_name(h);
        let port = h[name.len()..].strip_prefix(':').unwrap_or(default_port);
        format!("{}:{}", name.to_ascii_lowercase(), port)
    };
    with_port(rest) == with_port(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a Method, peer: &str) -> ApiRequest<'a> {
        ApiRequest {
            method,
            peer: peer.parse().unwrap(),
            host: Some("127.0.0.1:8080"),
            origin: None,
            sec_fetch_site: None,
            authorization: None,
            content_type: None,
        }
    }

    const OPEN: ApiPolicy<'static> = ApiPolicy { token: "", read_token: "", cors_origins: &[] };

    #[test]
    fn loopback_without_token() {
        assert_eq!(check(&OPEN, &req(&Method::GET, "127.0.0.1")), Ok(()));
        assert_eq!(check(&OPEN, &req(&Method::GET, "::1")), Ok(()));
        assert_eq!(check(&OPEN, &req(&Method::GET, "::ffff:127.0.0.1")), Ok(()));
        assert_eq!(check(&OPEN, &req(&Method::GET, "10.0.0.2")), Err(ApiRefusal::NotLoopback));
        for host in ["localhost", "localhost:8080", "[::1]:8080", "127.0.0.2", "a.localhost:1"] {
            let r = ApiRequest { host: Some(host), ..req(&Method::GET, "127.0.0.1") };
            assert_eq!(check(&OPEN, &r), Ok(()), "{host}");
        }
        // DNS rebinding: the browser on this host sends the attacker's name.
        let r = ApiRequest { host: Some("evil.example:8080"), ..req(&Method::GET, "127.0.0.1") };
        assert_eq!(check(&OPEN, &r), Err(ApiRefusal::NotLoopbackHost("evil.example:8080".into())));
    }

    #[test]
    fn foreign_origins_are_refused() {
        let post = Method::POST;
        let json = Some("application/json");
        let r = ApiRequest { origin: Some("http://evil.example"), content_type: json, ..req(&post, "127.0.0.1") };
        assert_eq!(check(&OPEN, &r), Err(ApiRefusal::CrossSite("http://evil.example".into())));
        let r = ApiRequest { origin: Some("null"), content_type: json, ..req(&post, "127.0.0.1") };
        assert!(matches!(check(&OPEN, &r), Err(ApiRefusal::CrossSite(_))));
        // Another port on the same host is another origin.
        let r = ApiRequest { origin: Some("http://127.0.0.1:3000"), content_type: json, ..req(&post, "127.0.0.1") };
        assert!(matches!(check(&OPEN, &r), Err(ApiRefusal::CrossSite(_))));
        // The server's own page (the demo page) is same-origin.
        let r = ApiRequest { origin: Some("http://127.0.0.1:8080"), content_type: json, ..req(&post, "127.0.0.1") };
        assert_eq!(check(&OPEN, &r), Ok(()));
        let r = ApiRequest { origin: Some("http://localhost"), host: Some("localhost:80"), ..req(&Method::GET, "::1") };
        assert_eq!(check(&OPEN, &r), Ok(()));
        // A cross-site GET navigation or image load carries no Origin.
        let r = ApiRequest { sec_fetch_site: Some("cross-site"), ..req(&Method::GET, "127.0.0.1") };
        assert_eq!(check(&OPEN, &r), Err(ApiRefusal::CrossSiteFetch("cross-site".into())));
        let r = ApiRequest { sec_fetch_site: Some("same-origin"), ..req(&Method::GET, "127.0.0.1") };
        assert_eq!(check(&OPEN, &r), Ok(()));
        // A listed origin is allowed (it still needs the token, when one is set).
        let listed = ["https://admin.example".to_string()];
        let p = ApiPolicy { token: "t", read_token: "", cors_origins: &listed };
        let r = ApiRequest { origin: Some("https://admin.example"), ..req(&Method::GET, "203.0.113.9") };
        assert_eq!(check(&p, &r), Err(ApiRefusal::Unauthorized));
        let r = ApiRequest { authorization: Some("Bearer t"), ..r };
        assert_eq!(check(&p, &r), Ok(()));
        assert_eq!(allowed_origin(&p, Some("https://ADMIN.example")), Some("https://ADMIN.example"));
        assert_eq!(allowed_origin(&p, Some("https://other.example")), None);
    }

    #[test]
    fn tokens_guard_reads_and_writes() {
        let p = ApiPolicy { token: "secret", read_token: "reader", cors_origins: &[] };
        let get = Method::GET;
        let del = Method::DELETE;
        assert_eq!(check(&p, &req(&get, "127.0.0.1")), Err(ApiRefusal::Unauthorized));
        assert_eq!(check(&p, &req(&del, "203.0.113.9")), Err(ApiRefusal::Unauthorized));
        let with = |m, a| ApiRequest { authorization: Some(a), host: Some("media.example"), ..req(m, "203.0.113.9") };
        assert_eq!(check(&p, &with(&get, "Bearer secret")), Ok(()));
        assert_eq!(check(&p, &with(&get, "Bearer reader")), Ok(()));
        assert_eq!(check(&p, &with(&del, "Bearer secret")), Ok(()));
        assert_eq!(check(&p, &with(&del, "Bearer reader")), Err(ApiRefusal::ReadOnly));
        assert_eq!(check(&p, &with(&get, "Bearer wrong")), Err(ApiRefusal::Unauthorized));
        assert_eq!(check(&p, &with(&get, "secret")), Err(ApiRefusal::Unauthorized));
        // Without a read token, the empty string is no token.
        let p = ApiPolicy { read_token: "", ..p };
        assert_eq!(check(&p, &with(&get, "Bearer ")), Err(ApiRefusal::Unauthorized));
    }

    #[test]
    fn writes_take_json() {
        let post = Method::POST;
        let r = req(&post, "127.0.0.1");
        assert_eq!(check(&OPEN, &r), Err(ApiRefusal::NotJson(String::new())));
        for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let r = ApiRequest { content_type: Some(ct), ..r };
            assert_eq!(check(&OPEN, &r), Err(ApiRefusal::NotJson(ct.into())), "{ct}");
        }
        for ct in ["application/json", "Application/JSON; charset=utf-8"] {
            assert_eq!(check(&OPEN, &ApiRequest { content_type: Some(ct), ..r }), Ok(()), "{ct}");
        }
        // DELETE has no body; one that claims a non-JSON one is refused too.
        assert_eq!(check(&OPEN, &req(&Method::DELETE, "127.0.0.1")), Ok(()));
        let r = ApiRequest { content_type: Some("text/plain"), ..req(&Method::DELETE, "127.0.0.1") };
        assert!(matches!(check(&OPEN, &r), Err(ApiRefusal::NotJson(_))));
        assert_eq!(check(&OPEN, &req(&Method::GET, "127.0.0.1")), Ok(()));
        assert_eq!(ApiRefusal::NotJson(String::new()).status().0, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
