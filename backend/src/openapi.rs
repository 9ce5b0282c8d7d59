//! The public API as an OpenAPI 3 document (`GET /api/openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the protocol's body types, so that it cannot
//! drift from the code.

use axum::Json;
use axum::response::IntoResponse;
use berth_protocol::ErrorBody;
use berth_protocol::api::{
    CreateRoomRequest, LoginRequest, LoginResponse, MessagePage, RoomList, RoomSummary, RoomTicket,
};
use berth_protocol::error::ErrorDetail;
use berth_protocol::frames::ChatMessage;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Berth public API",
        description = "Login, rooms and their history. Every error answers `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        api::create_room,
        api::lookup_room,
        api::room_messages,
        api::list_rooms,
        api::healthz,
        openapi_json,
    ),
    components(schemas(
        LoginRequest,
        LoginResponse,
        CreateRoomRequest,
        RoomTicket,
        RoomList,
        RoomSummary,
        MessagePage,
        ChatMessage,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&UserToken)
)]
pub struct ApiDoc;

/// The `user_token` bearer scheme (a JWT from `POST /api/login`).
struct UserToken;

impl Modify for UserToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "user_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/rooms",
            "/api/rooms/{roomId}",
            "/api/rooms/{roomId}/messages",
            "/healthz",
            "/api/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        assert!(doc["components"]["schemas"]["RoomTicket"].is_object());
    }
}
