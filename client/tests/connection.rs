//! `RoomConnection` against a fake session server.

mod support;

use std::time::Duration;

use berth::{ClientError, Message, RoomConnection, RoomEvent};
use berth_protocol::frames::ServerFrame;
use support::{TokenCheck, start_session};

const WAIT: Duration = Duration::from_secs(10);

async fn expect_frame(conn: &mut RoomConnection) -> ServerFrame {
    match conn.recv_timeout(WAIT).await.unwrap() {
        RoomEvent::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_welcome_send_and_echo() {
    let (url, _) = start_session(TokenCheck::Exact("t0k".into())).await;
    let (mut conn, welcome) = RoomConnection::connect(&url, "t0k").await.unwrap();
    assert_eq!(welcome.room_id, "r-test");
    assert_eq!(welcome.you.username, "test");
    assert_eq!(welcome.seq, 0);
    assert!(welcome.history.is_empty());

    conn.send("hello", Some("c-1")).await.unwrap();
    match expect_frame(&mut conn).await {
        ServerFrame::Message(m) => {
            assert_eq!(
                (m.seq, m.text.as_str(), m.client_id.as_deref()),
                (1, "hello", Some("c-1"))
            );
        }
        other => panic!("{other:?}"),
    }
    conn.send("again", None).await.unwrap();
    assert!(
        matches!(expect_frame(&mut conn).await, ServerFrame::Message(m) if m.seq == 2 && m.client_id.is_none())
    );
    conn.close().await.unwrap();

    // A second connection's welcome carries the history.
    let (conn, welcome) = RoomConnection::connect(&url, "t0k").await.unwrap();
    assert_eq!(welcome.seq, 2);
    assert_eq!(
        welcome
            .history
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["hello", "again"]
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn token_is_appended_to_the_query_encoded() {
    let token = "a b&c=d";
    let (url, session) = start_session(TokenCheck::Exact(token.into())).await;
    let (conn, _) = RoomConnection::connect(&format!("{url}?room=r-test"), token)
        .await
        .unwrap();
    assert_eq!(
        session.lock().unwrap().queries,
        ["room=r-test&token=a+b%26c%3Dd"]
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn refusal_before_upgrade_is_an_api_error() {
    let (url, session) = start_session(TokenCheck::Exact("right".into())).await;
    let err = RoomConnection::connect(&url, "wrong").await.unwrap_err();
    match err {
        ClientError::Api {
            status,
            ref code,
            retry_after,
            ..
        } => {
            assert_eq!(
                (status, code.as_str(), retry_after),
                (401, "invalid_ticket", Some(3))
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(session.lock().unwrap().connections, 0);

    let err = RoomConnection::connect("http://127.0.0.1:1/ws", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl(_)), "{err:?}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = RoomConnection::connect(&format!("ws://{addr}/ws"), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::WebSocket(_)), "{err:?}");
    assert_eq!(err.code(), None);
}

#[tokio::test]
async fn pings_are_answered_while_reading() {
    let (url, _) = start_session(TokenCheck::Exact("t".into())).await;
    let (mut conn, _) = RoomConnection::connect(&url, "t").await.unwrap();
    conn.send("!ping", None).await.unwrap();
    // The fake answers `pong_seen` only once our pong reached it.
    assert!(
        matches!(expect_frame(&mut conn).await, ServerFrame::Error { code, .. } if code == "pong_seen")
    );
}

#[tokio::test]
async fn close_codes_and_drops_end_the_connection() {
    let (url, _) = start_session(TokenCheck::Exact("t".into())).await;
    let (mut conn, _) = RoomConnection::connect(&url, "t").await.unwrap();
    conn.send("!close 1012", None).await.unwrap();
    let closed = conn.recv_timeout(WAIT).await.unwrap();
    assert_eq!(
        closed,
        RoomEvent::Closed {
            code: Some(1012),
            reason: "told to".into()
        }
    );
    assert!(conn.is_closed());
    assert_eq!(conn.recv_timeout(WAIT).await.unwrap(), closed, "replayed");

    let (mut conn, _) = RoomConnection::connect(&url, "t").await.unwrap();
    conn.send("!drop", None).await.unwrap();
    assert!(matches!(
        conn.recv_timeout(WAIT).await.unwrap(),
        RoomEvent::Closed { code: None, .. }
    ));
}

#[tokio::test]
async fn raw_frames_and_timeouts() {
    let (url, _) = start_session(TokenCheck::Exact("t".into())).await;
    let (mut conn, _) = RoomConnection::connect(&url, "t").await.unwrap();

    // Nothing comes: the wait runs out and the connection stays usable.
    assert!(matches!(
        conn.recv_timeout(Duration::from_millis(50)).await,
        Err(ClientError::Timeout)
    ));

    conn.send_raw(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert!(
        matches!(expect_frame(&mut conn).await, ServerFrame::Error { code, .. } if code == "bad_frame")
    );
    conn.send_raw(Message::text(r#"{"type":"shout"}"#))
        .await
        .unwrap();
    assert!(
        matches!(expect_frame(&mut conn).await, ServerFrame::Error { code, .. } if code == "bad_frame")
    );
    conn.send("still here", None).await.unwrap();
    assert!(
        matches!(expect_frame(&mut conn).await, ServerFrame::Message(m) if m.text == "still here")
    );
}
