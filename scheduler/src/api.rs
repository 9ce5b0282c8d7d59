//! The HTTP API: the internal `/v1` calls of `berth_protocol::cluster` behind the cluster
//! secret, plus `/healthz` and `/metrics`. Every error answer is the JSON `ErrorBody`.

use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use berth_protocol::cluster::{
    Heartbeat, HeartbeatAck, HostedRoom, PlaceRoomRequest, Placement, RegisterServer, Registered,
    ReleaseRoom, RoomDirectory, ServerList, ServerState,
};
use berth_protocol::ids;
use berth_runtime::http::{ClusterRoomId, Json as Body, JsonOrDefault, Query, ServerId};
use berth_runtime::layers::{DEFAULT_REQUEST_TIMEOUT, Layers};
use serde::Deserialize;
use tracing::{debug, info};

use crate::error::{self, ApiError};
use crate::placement;
use crate::registry::{Server, lock};
use crate::spawner;
use crate::state::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest session-server URL accepted.
const MAX_URL_BYTES: usize = 2048;
/// Longest `createdBy` accepted.
const MAX_CREATED_BY_BYTES: usize = 128;
/// Most rooms one registration or heartbeat may report.
const MAX_REPORTED_ROOMS: usize = 10_000;
/// Upper bounds of a reported capacity.
const MAX_CAPACITY_ROOMS: u32 = 100_000;
const MAX_MEMBERS_PER_ROOM: u32 = 1_000_000;

/// The scheduler's router (testable with `oneshot`), inside the shared layers.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/rooms", post(create_room).get(list_rooms))
        .route("/rooms/{id}", get(get_room))
        .route("/rooms/{id}/release", post(release_room))
        .route("/servers", post(register_server).get(list_servers))
        .route("/servers/{id}", delete(remove_server))
        .route("/servers/{id}/heartbeat", put(heartbeat))
        .route("/servers/{id}/drain", post(drain_server))
        .fallback(berth_runtime::http::not_found)
        .method_not_allowed_fallback(berth_runtime::http::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .fallback(berth_runtime::http::not_found)
        .method_not_allowed_fallback(berth_runtime::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    Layers {
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        max_body_bytes: MAX_BODY_BYTES,
        content_security_policy: None,
    }
    .apply(routes)
}

/// Who is calling: the holder of the cluster secret (the backend, an operator), or one session
/// server with its own credential (`berth_protocol::cluster::server_credential`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Server(String),
}

impl Caller {
    /// Only the cluster secret may do this.
    fn operator(&self, action: &'static str) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Server(id) => {
                info!(server_id = %id, action, "refused a session server's credential");
                Err(error::forbidden(action))
            }
        }
    }

    /// The cluster secret, or the credential of server `server_id` itself.
    fn operator_or_server(&self, server_id: &str, action: &'static str) -> Result<(), ApiError> {
        match self {
            Caller::Server(id) if id != server_id => {
                info!(server_id = %id, other = %server_id, action, "refused a session server acting for another");
                Err(error::forbidden(action))
            }
            _ => Ok(()),
        }
    }
}

/// Bearer cluster secret (compared in constant time) or a session server's credential.
async fn require_secret(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller = presented.and_then(|token| {
        if constant_time_eq(token.as_bytes(), state.secret.as_bytes()) {
            Some(Caller::Operator)
        } else {
            berth_protocol::cluster::verify_server_credential(&state.secret, token)
                .map(|id| Caller::Server(id.to_owned()))
        }
    });
    match caller {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            debug!(path = %request.uri().path(), "refused a call without the cluster secret");
            error::unauthorized().into_response()
        }
    }
}

/// Equality whose time does not depend on where the inputs differ (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = match state.replica() {
        None => state.metrics.render(&state.registry, &state.directory),
        Some(replica) => replica.metrics(&state).await,
    };
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

fn validate_hosted(rooms: &[HostedRoom]) -> Result<(), ApiError> {
    if rooms.len() > MAX_REPORTED_ROOMS {
        return Err(ApiError::invalid_request(format!(
            "at most {MAX_REPORTED_ROOMS} rooms per report"
        )));
    }
    if let Some(bad) = rooms.iter().find(|r| !ids::is_valid_room_id(&r.room_id)) {
        return Err(ApiError::invalid_request(format!(
            "invalid room id in report ({} bytes)",
            bad.room_id.len()
        )));
    }
    Ok(())
}

fn validate_register(req: &RegisterServer) -> Result<(), ApiError> {
    if let Some(id) = &req.server_id
        && !ids::is_valid_server_id(id)
    {
        return Err(ApiError::invalid_request("invalid server id"));
    }
    let admin_url_ok = req.admin_url.as_ref().is_none_or(|u| {
        u.len() <= MAX_URL_BYTES
            && (u.starts_with("http://") || u.starts_with("https://"))
            && u.len() > "https://".len()
            && !u.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if !admin_url_ok {
        return Err(ApiError::invalid_request("invalid adminUrl"));
    }
    let url_ok = req.url.len() <= MAX_URL_BYTES
        && (req.url.starts_with("ws://") || req.url.starts_with("wss://"))
        && req.url.len() > "wss://".len()
        && !req.url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !url_ok {
        return Err(ApiError::invalid_request(
            "url must be a ws:// or wss:// URL",
        ));
    }
    if !(1..=MAX_CAPACITY_ROOMS).contains(&req.capacity.rooms)
        || !(1..=MAX_MEMBERS_PER_ROOM).contains(&req.capacity.members_per_room)
    {
        return Err(ApiError::invalid_request("capacity out of range"));
    }
    validate_hosted(&req.rooms)
}

/// `POST /v1/rooms`.
async fn create_room(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonOrDefault(req): JsonOrDefault<PlaceRoomRequest>,
) -> Result<(StatusCode, Json<Placement>), ApiError> {
    caller.operator("create rooms")?;
    let name = berth_protocol::api::room_name(req.name.as_deref())
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    if let Some(user) = &req.created_by {
        if user.is_empty()
            || user.len() > MAX_CREATED_BY_BYTES
            || user.chars().any(char::is_control)
        {
            return Err(ApiError::invalid_request("invalid createdBy"));
        }
        if let Err(wait) = state.rate_limiter.check(user) {
            crate::metrics::inc(&state.metrics.rate_limited);
            info!(user_id = %user, "room creates rate limited");
            return Err(error::rate_limited(wait.as_secs_f64().ceil() as u64));
        }
    }
    let room_id = ids::new_room_id();
    let name = name.unwrap_or_else(|| room_id.clone());
    let public = req.public && !req.private;
    let placement = match state.replica() {
        None => {
            placement::place_new(&state, room_id, name, public, req.private, req.created_by).await?
        }
        Some(replica) => {
            let meta = berth_store::RoomMeta {
                room_id,
                name,
                public,
                private: req.private,
                created_by: req.created_by,
                created_at_ms: berth_protocol::now_ms(),
            };
            replica.place_new(&state, meta).await?
        }
    };
    Ok((StatusCode::CREATED, Json(placement)))
}

#[derive(Deserialize)]
struct ListRooms {
    public: Option<bool>,
}

/// `GET /v1/rooms[?public=true|false]`.
async fn list_rooms(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListRooms>,
) -> Result<Json<RoomDirectory>, ApiError> {
    caller.operator("list rooms")?;
    let rooms = match state.replica() {
        None => state.directory.list(query.public),
        Some(replica) => replica.rooms(query.public).await?,
    };
    Ok(Json(RoomDirectory { rooms }))
}

/// `GET /v1/rooms/{id}`: re-places an orphaned room.
async fn get_room(
    State(state): State<AppState>,
    ClusterRoomId(room_id): ClusterRoomId,
) -> Result<Json<Placement>, ApiError> {
    let placement = match state.replica() {
        None => placement::lookup(&state, &room_id).await?,
        Some(replica) => replica.lookup(&state, &room_id).await?,
    };
    Ok(Json(placement))
}

/// `POST /v1/rooms/{id}/release`: 204 whether or not the placement was still current.
async fn release_room(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ClusterRoomId(room_id): ClusterRoomId,
    Body(req): Body<ReleaseRoom>,
) -> Result<StatusCode, ApiError> {
    if !ids::is_valid_server_id(&req.server_id) {
        return Err(ApiError::invalid_request("invalid server id"));
    }
    caller.operator_or_server(&req.server_id, "release another server's rooms")?;
    let current = match state.replica() {
        None => state
            .directory
            .release(&room_id, &req.server_id, req.epoch, &state.registry),
        Some(replica) => replica.release(&room_id, &req.server_id, req.epoch).await?,
    };
    if current {
        info!(room_id, server_id = %req.server_id, epoch = req.epoch, handoff = req.handoff, "room released; dormant until its next lookup");
    } else {
        debug!(room_id, server_id = %req.server_id, epoch = req.epoch, "stale release ignored");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/servers`: a session server (re-)announces itself.
async fn register_server(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(mut req): Body<RegisterServer>,
) -> Result<Json<Registered>, ApiError> {
    validate_register(&req)?;
    // A server credential registers its own server and no other.
    if let Caller::Server(id) = &caller {
        match req.server_id.clone() {
            None => req.server_id = Some(id.clone()),
            Some(named) => caller.operator_or_server(&named, "register another server")?,
        }
    }
    // Whoever registered with the cluster secret gets its own credential, to use from now on.
    let credential_for = |id: &str| {
        (caller == Caller::Operator)
            .then(|| berth_protocol::cluster::server_credential(&state.secret, id))
    };
    if let Some(replica) = state.replica() {
        let server_id = req.server_id.clone().unwrap_or_else(ids::new_server_id);
        replica.register(&state, &server_id, &req).await?;
        return Ok(Json(Registered {
            credential: credential_for(&server_id),
            server_id,
            heartbeat_interval_ms: state.config.heartbeat_interval_ms,
            heartbeat_timeout_ms: Some(state.config.heartbeat_timeout_ms),
        }));
    }
    let server = match &req.server_id {
        Some(id) => match state.registry.get(id) {
            Some(server) => server,
            None => state.registry.insert_if_absent(Server::outside(
                id.clone(),
                req.url.clone(),
                req.capacity,
                req.pid,
            )),
        },
        None => loop {
            let outside =
                Server::outside(ids::new_server_id(), req.url.clone(), req.capacity, req.pid);
            if let Some(server) = state.registry.try_insert(outside) {
                break server;
            }
        },
    };
    if server.kill_was_requested() || server.has_exited() {
        // Its process is being killed or is gone: whoever this is, it must not come back.
        return Err(error::unknown_server());
    }
    state.vigil.heard();
    let previous = server.state();
    // A managed child's pid is the one we spawned, whatever it says.
    let pid = if server.managed { None } else { req.pid };
    server.registered(req.url, req.capacity, req.connections, pid);
    server.set_admin_url(req.admin_url);
    // Rooms first, so their slots count before placements may land here.
    state.directory.adopt(&server, &req.rooms, &state.registry);
    // A report knows no names: take them from the store (after a scheduler restart).
    if let Some(store) = &state.store {
        for room in &req.rooms {
            if state
                .directory
                .get(&room.room_id)
                .is_some_and(|e| e.name == room.room_id && !e.public)
                && let Ok(Some(meta)) = store.room(&room.room_id).await
            {
                state
                    .directory
                    .set_meta(&room.room_id, meta.name, meta.public);
            }
        }
    }
    let draining = req.draining || server.drain_requested();
    {
        let _decision = lock(&state.placement_lock);
        server.set_state(if draining {
            ServerState::Draining
        } else {
            ServerState::Ready
        });
    }
    if previous == ServerState::Starting && server.managed {
        state
            .metrics
            .spawn_latency
            .observe(server.started.elapsed());
        info!(server_id = %server.id, rooms = req.rooms.len(), startup_ms = u64::try_from(server.started.elapsed().as_millis()).unwrap_or(u64::MAX), "spawned session server registered");
    } else {
        info!(server_id = %server.id, managed = server.managed, rooms = req.rooms.len(), draining, previous = previous.as_str(), "session server registered");
    }
    state.fleet_kick.notify_one();
    Ok(Json(Registered {
        credential: credential_for(&server.id),
        server_id: server.id.clone(),
        heartbeat_interval_ms: state.config.heartbeat_interval_ms,
        heartbeat_timeout_ms: Some(state.config.heartbeat_timeout_ms),
    }))
}

/// `PUT /v1/servers/{id}/heartbeat`.
async fn heartbeat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ServerId(server_id): ServerId,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    caller.operator_or_server(&server_id, "heartbeat for another server")?;
    validate_hosted(&hb.rooms)?;
    if let Some(replica) = state.replica() {
        return Ok(Json(replica.heartbeat(&state, &server_id, &hb).await?));
    }
    let server = state
        .registry
        .get(&server_id)
        .filter(|s| matches!(s.state(), ServerState::Ready | ServerState::Draining))
        .ok_or_else(error::unknown_server)?;
    state.vigil.heard();
    server.heartbeat(hb.connections);
    if hb.draining && server.state() == ServerState::Ready {
        let _decision = lock(&state.placement_lock);
        server.set_state(ServerState::Draining);
        info!(server_id, "session server is draining");
    }
    let revoked_rooms =
        state
            .directory
            .heartbeat(&server, &hb.rooms, state.config.unreported_room_ttl());
    if !revoked_rooms.is_empty() {
        info!(
            server_id,
            revoked = revoked_rooms.len(),
            "revoking rooms placed elsewhere"
        );
    }
    Ok(Json(HeartbeatAck {
        state: server.state(),
        drain: server.drain_requested(),
        revoked_rooms,
    }))
}

/// `POST /v1/servers/{id}/drain`: no new rooms; the next heartbeat answer asks it to drain.
async fn drain_server(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ServerId(server_id): ServerId,
) -> Result<StatusCode, ApiError> {
    caller.operator("drain servers")?;
    if let Some(replica) = state.replica() {
        if !replica.drain(&server_id).await? {
            return Err(error::unknown_server());
        }
        info!(server_id, "drain requested");
        return Ok(StatusCode::ACCEPTED);
    }
    let server = state
        .registry
        .get(&server_id)
        .filter(|s| s.state() != ServerState::Dead)
        .ok_or_else(error::unknown_server)?;
    {
        let _decision = lock(&state.placement_lock);
        server.request_drain();
        if server.state() == ServerState::Ready {
            server.set_state(ServerState::Draining);
        }
    }
    info!(server_id, "drain requested");
    state.fleet_kick.notify_one();
    Ok(StatusCode::ACCEPTED)
}

/// `DELETE /v1/servers/{id}`: a server leaving; its remaining rooms are re-placed on lookup.
async fn remove_server(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ServerId(server_id): ServerId,
) -> Result<StatusCode, ApiError> {
    caller.operator_or_server(&server_id, "remove another server")?;
    if let Some(replica) = state.replica() {
        if !replica.remove(&server_id).await? {
            return Err(error::unknown_server());
        }
        info!(server_id, "session server left");
        return Ok(StatusCode::NO_CONTENT);
    }
    let server = state
        .registry
        .get(&server_id)
        .ok_or_else(error::unknown_server)?;
    spawner::retire(&state, &server);
    info!(server_id, "session server left");
    state.fleet_kick.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/servers`, oldest first.
async fn list_servers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ServerList>, ApiError> {
    caller.operator("list servers")?;
    if let Some(replica) = state.replica() {
        return Ok(Json(ServerList {
            servers: replica.servers().await?,
        }));
    }
    let mut servers = state.registry.snapshot();
    servers.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
    Ok(Json(ServerList {
        servers: servers.iter().map(|s| s.info()).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
