//! The browser client (`client/web/`): embedded in the binary at build time, or read from a
//! folder on every request with `--web-dir` (development).

use std::path::PathBuf;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// Where the web files come from.
#[derive(Clone, Debug)]
pub enum WebFiles {
    /// The copy compiled into the binary.
    Embedded,
    /// Read from this folder on each request.
    Dir(PathBuf),
}

impl WebFiles {
    /// The folder `--web-dir` names, else the embedded copy.
    pub fn new(dir: Option<&std::path::Path>) -> Self {
        match dir {
            Some(dir) => WebFiles::Dir(dir.to_owned()),
            None => WebFiles::Embedded,
        }
    }
}

/// One servable file: its name in `client/web/`, content type and embedded content.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    embedded: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    embedded: include_str!("../../client/web/index.html"),
};
const SDK: Asset = Asset {
    name: "berth.js",
    content_type: "text/javascript; charset=utf-8",
    embedded: include_str!("../../client/web/berth.js"),
};
const APP: Asset = Asset {
    name: "app.js",
    content_type: "text/javascript; charset=utf-8",
    embedded: include_str!("../../client/web/app.js"),
};
const CONVERSATIONS: Asset = Asset {
    name: "conversations.js",
    content_type: "text/javascript; charset=utf-8",
    embedded: include_str!("../../client/web/conversations.js"),
};
const STYLE: Asset = Asset {
    name: "style.css",
    content_type: "text/css; charset=utf-8",
    embedded: include_str!("../../client/web/style.css"),
};

const OPERATOR_PAGE: Asset = Asset {
    name: "operator.html",
    content_type: "text/html; charset=utf-8",
    embedded: include_str!("../../client/web/operator.html"),
};
const OPERATOR_JS: Asset = Asset {
    name: "operator.js",
    content_type: "text/javascript; charset=utf-8",
    embedded: include_str!("../../client/web/operator.js"),
};

/// `GET /operator`: the live fleet view (asks for the cluster secret).
pub async fn operator_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &OPERATOR_PAGE).await
}

/// `GET /operator.js`.
pub async fn operator_script(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &OPERATOR_JS).await
}

/// `GET /`.
pub async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &INDEX).await
}

/// `GET /berth.js`.
pub async fn sdk(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &SDK).await
}

/// `GET /app.js`.
pub async fn app(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &APP).await
}

/// `GET /conversations.js`: the chat UI's direct messages, my rooms, read state and typing.
pub async fn conversations(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &CONVERSATIONS).await
}

/// `GET /style.css`.
pub async fn style(State(state): State<AppState>) -> Result<Response, ApiError> {
    serve(&state, &STYLE).await
}

async fn serve(state: &AppState, asset: &Asset) -> Result<Response, ApiError> {
    let body: axum::body::Body = match state.web() {
        WebFiles::Embedded => asset.embedded.into(),
        WebFiles::Dir(dir) => {
            let path = dir.join(asset.name);
            match tokio::fs::read(&path).await {
                Ok(bytes) => bytes.into(),
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        ErrorCode::NotFound,
                        "no such file",
                    )
                    .with_cause(format!("{}: {e}", path.display())));
                }
            }
        }
    };
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        // nosniff, no-referrer and the CSP (`WEB_CLIENT_CSP`) come from the shared layers
        // (`berth_runtime::layers`); pages also refuse framing the old way, for old browsers.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    Ok((headers, body).into_response())
}
