//! The public API as an OpenAPI 3 document (`GET /api/openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the protocol's body types, so that it cannot
//! drift from the code.

use axum::Json;
use axum::response::IntoResponse;
use berth_protocol::ErrorBody;
use berth_protocol::api::{
    AddMemberRequest, ChangePasswordRequest, CreateRoomRequest, DmRequest, DmTicket, LoginRequest,
    LoginResponse, MeResponse, MessagePage, MyRoom, MyRooms, RegisterRequest, RoomList,
    RoomSummary, RoomTicket, SendMessageRequest,
};
use berth_protocol::cluster::{Capacity, RoomInfo, ServerInfo, ServerState};
use berth_protocol::error::ErrorDetail;
use berth_protocol::frames::{ChatMessage, User};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::operator::{Fleet, FleetServer};
use crate::{accounts, api, conversations, messages, operator};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Berth public API",
        description = "Login, rooms and their history, messages over HTTP, private rooms and direct messages. Every error answers `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        accounts::login,
        accounts::register,
        accounts::me,
        accounts::refresh,
        accounts::change_password,
        api::create_room,
        api::lookup_room,
        api::room_messages,
        messages::send,
        conversations::add_member,
        conversations::open_dm,
        conversations::my_rooms,
        api::list_rooms,
        api::healthz,
        operator::fleet,
        openapi_json,
    ),
    components(schemas(
        LoginRequest,
        LoginResponse,
        RegisterRequest,
        ChangePasswordRequest,
        MeResponse,
        Fleet,
        FleetServer,
        ServerInfo,
        ServerState,
        Capacity,
        RoomInfo,
        CreateRoomRequest,
        RoomTicket,
        RoomList,
        RoomSummary,
        MessagePage,
        ChatMessage,
        SendMessageRequest,
        AddMemberRequest,
        DmRequest,
        DmTicket,
        MyRooms,
        MyRoom,
        User,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&UserToken)
)]
pub struct ApiDoc;

/// The `user_token` bearer scheme (a JWT from `POST /api/login`), and `cluster_secret` (the
/// operator API's bearer).
struct UserToken;

impl Modify for UserToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "user_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "cluster_secret",
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
            "/api/login",
            "/api/register",
            "/api/me",
            "/api/me/password",
            "/api/token/refresh",
            "/api/operator/fleet",
            "/api/rooms/{roomId}/members",
            "/api/dms",
            "/api/me/rooms",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        assert!(doc["components"]["schemas"]["RoomTicket"].is_object());
    }
}
