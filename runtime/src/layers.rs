//! The tower-http layers every Berth HTTP service puts around its routes: request timeout, body
//! size limit, security headers, and request tracing that logs each refused or failed request.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::ErrorCode;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::http::ApiError;

/// How long a plain HTTP request may take by default: above the scheduler's spawn timeout (10 s),
/// which a room placement may wait out.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a service's layers enforce.
#[derive(Debug, Clone)]
pub struct Layers {
    /// Longest a request may take to be answered (an upgraded WebSocket is not a request any
    /// more: its life is not bounded by this).
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `Content-Security-Policy` of every answer, for a service that serves pages.
    pub content_security_policy: Option<&'static str>,
}

/// The policy of the backend's web client: nothing unless named (`default-src 'none'`), its own
/// scripts and styles only (no inline ones), WebSockets, Server-Sent Events and HTTP send
/// (`http:`/`https:`) to the session servers, which are other origins whose addresses come with
/// each ticket, no native form submissions (every form is handled by script), never framed.
pub const WEB_CLIENT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss: http: https:; object-src 'none'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl Layers {
    /// Wraps `router`. Outermost first: tracing (sees the final status and the whole latency),
    /// security headers, the error body for the layers' own refusals, the timeout, the body
    /// limit.
    pub fn apply(&self, router: Router) -> Router {
        let mut router = router
            .layer(RequestBodyLimitLayer::new(self.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                self.request_timeout,
            ))
            .layer(axum::middleware::map_response(error_body))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ));
        if let Some(csp) = self.content_security_policy {
            router = router.layer(SetResponseHeaderLayer::if_not_present(
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(csp),
            ));
        }
        router.layer(
            TraceLayer::new_for_http()
                // The path without its query string: tickets travel there.
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = request.uri().path(),
                    )
                })
                .on_request(())
                .on_response(
                    |response: &Response<_>, latency: Duration, _span: &tracing::Span| {
                        let status = response.status();
                        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
                        if status.is_server_error() {
                            tracing::warn!(status = status.as_u16(), latency_ms, "request failed");
                        } else if status.is_client_error() {
                            tracing::debug!(
                                status = status.as_u16(),
                                latency_ms,
                                "request refused"
                            );
                        }
                    },
                )
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
    }
}

/// Gives the layers' own refusals (413 from the body limit, 408 from the timeout, which come
/// without a body) the error body of every other answer.
async fn error_body(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large().into_response(),
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            "the request took too long",
        )
        .into_response(),
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use berth_protocol::error::ErrorBody;
    use tower::ServiceExt as _;

    fn layered(csp: Option<&'static str>) -> Router {
        let router = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/echo", post(|body: axum::body::Bytes| async move { body }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        Layers {
            request_timeout: Duration::from_millis(50),
            max_body_bytes: 16,
            content_security_policy: csp,
        }
        .apply(router)
    }

    async fn code_of(response: Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice::<ErrorBody>(&body)
            .unwrap()
            .error
            .code
    }

    #[tokio::test]
    async fn every_answer_carries_the_security_headers() {
        let request = || axum::http::Request::get("/ok").body(Body::empty()).unwrap();
        let response = layered(Some(WEB_CLIENT_CSP))
            .oneshot(request())
            .await
            .unwrap();
        let headers = response.headers();
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        // The web client reaches session servers over WebSockets and, as a fallback, SSE.
        assert!(
            csp.contains("connect-src 'self' ws: wss: http: https:;"),
            "{csp}"
        );
        // A service that serves no pages sets no policy.
        let response = layered(None).oneshot(request()).await.unwrap();
        assert!(!response.headers().contains_key("content-security-policy"));
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_with_the_error_body() {
        let request = axum::http::Request::post("/echo")
            .header(header::CONTENT_LENGTH, 64)
            .body(Body::from("x".repeat(64)))
            .unwrap();
        let response = layered(None).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
        assert_eq!(code_of(response).await, "payload_too_large");
    }

    #[tokio::test]
    async fn a_slow_request_is_408_with_the_error_body() {
        let request = axum::http::Request::get("/slow")
            .body(Body::empty())
            .unwrap();
        let response = layered(None).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(code_of(response).await, "request_timeout");
    }

    /// The timeout bounds the answer to an upgrade request (the `101`), not the upgraded
    /// connection: bytes still flow long after it.
    #[tokio::test]
    async fn an_upgraded_connection_outlives_the_request_timeout() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        async fn upgrade(mut request: axum::extract::Request) -> Response {
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let io = on_upgrade.await.unwrap();
                let mut io = hyper_util::rt::TokioIo::new(io);
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "echo")
                .body(axum::body::Body::empty())
                .unwrap()
        }

        let router = Layers {
            request_timeout: Duration::from_millis(50),
            max_body_bytes: 16,
            content_security_policy: None,
        }
        .apply(Router::new().route("/up", get(upgrade)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // Four times the request timeout later, the connection still echoes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
            .await
            .expect("the upgraded connection answers")
            .unwrap();
        assert_eq!(&echo, b"ping");
        server.abort();
    }
}
