//! Request limits of the public API, per client address and per user (GCRA buckets from
//! `governor`), and the client address itself.
//!
//! - every request except `/healthz`: `--api-rate-per-address` per minute;
//! - every request with a user token: `--api-rate-per-user` per minute;
//! - room creates: `--create-rate-per-address` per minute (the scheduler adds its per-user
//!   `BERTH_CREATE_RATE`);
//! - history pages (the most expensive answer): `--history-rate` per minute, per user and per
//!   address.
//!
//! Refusals are 429 `rate_limited` with `Retry-After`. The client address is the TCP peer,
//! unless the peer is one of `--trusted-proxies`: then the nearest address in
//! `X-Forwarded-For` that is not itself a trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_protocol::ErrorCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use crate::error::ApiError;
use crate::state::AppState;

/// Keys kept per limiter before idle ones are pruned.
const MAX_KEYS: usize = 100_000;

/// Most `X-Forwarded-For` entries looked at.
const MAX_FORWARDED_HOPS: usize = 16;

/// One keyed limit: `per_minute` requests, all of them available at once (burst).
pub struct Limit<K: std::hash::Hash + Eq + Clone> {
    what: &'static str,
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    /// `per_minute == 0` disables the limit.
    pub fn per_minute(what: &'static str, per_minute: u32) -> Self {
        Limit {
            what,
            limiter: NonZeroU32::new(per_minute)
                .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n))),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request for `key`, or answers 429 with the wait.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            rate_limited(self.what, wait)
        })
    }
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1).
fn rate_limited(what: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        format!("too many {what}; retry in {secs}s"),
    )
    .retry_after(secs)
}

/// Every limit of the backend.
pub struct Limits {
    pub api_per_address: Limit<IpAddr>,
    pub api_per_user: Limit<String>,
    pub create_per_address: Limit<IpAddr>,
    pub history_per_address: Limit<IpAddr>,
    pub history_per_user: Limit<String>,
    trusted_proxies: Vec<IpNet>,
}

impl Limits {
    pub fn new(config: &crate::Config) -> Limits {
        Limits {
            api_per_address: Limit::per_minute("requests", config.api_rate_per_address),
            api_per_user: Limit::per_minute("requests", config.api_rate_per_user),
            create_per_address: Limit::per_minute(
                "room creates from this address",
                config.create_rate_per_address,
            ),
            history_per_address: Limit::per_minute("history pages", config.history_rate),
            history_per_user: Limit::per_minute("history pages", config.history_rate),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// The client's address: the peer, or what a trusted proxy says it forwarded for.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        // Right to left: each hop appended the address it received from; the first one that is
        // not one of our proxies is the client. Anything unreadable stops the walk.
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// Parses `--trusted-proxies`: IP addresses or CIDR blocks.
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR block"))
}

/// The client address of a request (see [`Limits::client_addr`]): the one type every handler
/// takes it as (rate limits, sign-in throttles). Without connection info (a router driven by
/// `oneshot` in tests) it is the unspecified address.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The address, unless the server runs without connection info.
    pub fn known(self) -> Option<IpAddr> {
        (!self.0.is_unspecified()).then_some(self.0)
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Ok(ClientAddr(state.limits().client_addr(peer, &parts.headers)))
    }
}

/// Middleware: the per-address limit of every request but `/healthz` (probes).
pub async fn per_address(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() != "/healthz"
        && let Err(refusal) = state.limits().api_per_address.check(&addr)
    {
        tracing::debug!(%addr, "request rate limited");
        return refusal.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn limits(proxies: &[&str]) -> Limits {
        Limits {
            api_per_address: Limit::per_minute("requests", 0),
            api_per_user: Limit::per_minute("requests", 0),
            create_per_address: Limit::per_minute("creates", 2),
            history_per_address: Limit::per_minute("pages", 0),
            history_per_user: Limit::per_minute("pages", 0),
            trusted_proxies: proxies.iter().map(|p| parse_proxy(p).unwrap()).collect(),
        }
    }

    #[test]
    fn a_burst_then_429_with_a_wait() {
        let l = limits(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.create_per_address.check(&ip).is_ok());
        assert!(l.create_per_address.check(&ip).is_ok());
        let refused = l.create_per_address.check(&ip).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code(), "rate_limited");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.create_per_address.check(&other).is_ok());
        assert!(l.api_per_address.check(&ip).is_ok(), "0 disables");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.0.0.2"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limits(&[]).client_addr(proxy, &headers), proxy);
        assert_eq!(
            limits(&["10.0.0.0/8"]).client_addr(stranger, &headers),
            stranger,
            "a client cannot claim another address"
        );
        // Only the hops our own proxies added count; the client's own claim does not.
        assert_eq!(
            limits(&["10.0.0.0/8"]).client_addr(proxy, &headers),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert!(parse_proxy("10.1.2.3").is_ok());
        assert!(parse_proxy("::1").is_ok());
        assert!(parse_proxy("fd00::/8").is_ok());
        assert!(parse_proxy("proxy.example").is_err());
    }
}
