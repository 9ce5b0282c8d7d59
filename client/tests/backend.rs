//! `Backend` against the real backend in front of a fake scheduler.

mod support;

use axum::http::StatusCode;
use berth::{Backend, ClientError};
use berth_protocol::api::CreateRoomRequest;
use support::Cluster;

#[tokio::test]
async fn login_create_lookup_list() {
    let cluster = Cluster::start("ws://127.0.0.1:9/ws").await;
    // A trailing slash on the base URL is fine.
    let backend = Backend::new(format!("{}/", cluster.backend_url));
    backend.healthz().await.unwrap();

    let session = backend.login("alice").await.unwrap();
    assert_eq!(
        (session.user_id.as_str(), session.username.as_str()),
        ("g-alice", "alice")
    );
    assert!(
        !format!("{session:?}").contains(&session.token),
        "Debug hides the token"
    );

    let created = backend
        .create_room(
            &session,
            &CreateRoomRequest {
                name: Some("lobby".into()),
                public: true,
                private: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(created.name, "lobby");
    assert_eq!(created.url, "ws://127.0.0.1:9/ws");
    assert_eq!(created.server_id, support::SERVER_ID);

    let found = backend
        .lookup_room(&session, &created.room_id)
        .await
        .unwrap();
    assert_eq!(found.room_id, created.room_id);

    let list = backend.list_rooms().await.unwrap();
    assert_eq!(list.rooms.len(), 1);
    assert_eq!(list.rooms[0].room_id, created.room_id);
    assert_eq!(list.rooms[0].name, "lobby");
}

#[tokio::test]
async fn api_errors_carry_code_status_and_retry_after() {
    let cluster = Cluster::start("ws://127.0.0.1:9/ws").await;
    let backend = Backend::new(&cluster.backend_url);

    let err = backend.login("not valid!").await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_username"));
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.to_string().split(':').next(), Some("invalid_username"));

    let session = backend.login("bob").await.unwrap();
    let err = backend
        .lookup_room(&session, "r-missing")
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(404), Some("room_not_found"))
    );
    // Odd ids stay inside their path segment: still the room lookup's 404, not the router's.
    let err = backend.lookup_room(&session, "a/b?c=d").await.unwrap_err();
    assert_eq!(err.code(), Some("room_not_found"));

    let stale = berth::Session {
        token: "forged".into(),
        ..session.clone()
    };
    let err = backend
        .create_room(&stale, &CreateRoomRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some("unauthorized"))
    );

    cluster.scheduler.lock().unwrap().refuse =
        Some((StatusCode::SERVICE_UNAVAILABLE, "no_capacity", Some(7)));
    let err = backend
        .create_room(&session, &CreateRoomRequest::default())
        .await
        .unwrap_err();
    match err {
        ClientError::Api {
            status,
            ref code,
            retry_after,
            ..
        } => {
            assert_eq!(
                (status, code.as_str(), retry_after),
                (503, "no_capacity", Some(7))
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn transport_and_url_errors_have_no_code() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Backend::new(format!("http://{addr}"))
        .list_rooms()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Http(_)), "{err:?}");
    assert_eq!(err.code(), None);
    assert!(err.to_string().starts_with("transport:"));

    let err = Backend::new("not a url").list_rooms().await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl(_)), "{err:?}");
    let err = Backend::new("ws://127.0.0.1:1")
        .list_rooms()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl(_)), "{err:?}");
}
