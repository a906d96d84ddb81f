//! The WebSocket close handshake (SPEC §3, RFC 6455 §5.5.1 and §7): a client's close
//! frame is answered with its code, and the TCP connection ends at once, also when
//! the two sides' close frames cross.
//!
//! These tests speak WebSocket by hand over a `TcpStream`, so they see what a library
//! would hide: the close frame's exact payload, and the moment the server's FIN
//! arrives (a read returning 0). The broker runs with a 60 s linger, so a connection
//! that is only closed when the linger gives up fails the 5 s bound.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Generous: the server should close within milliseconds.
const EOF_WITHIN: Duration = Duration::from_secs(5);

/// A frame from the server: (opcode, payload).
type Frame = (u8, Vec<u8>);

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

/// A WebSocket client that reads and writes frames itself.
struct RawWs {
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buffer: Vec<u8>,
}

impl RawWs {
    /// Opens `/ws` for the session with its token, and checks the `101`.
    async fn connect(app: &TestApp, id: &str, token: &str) -> RawWs {
        let addr = app.address.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /v1/sessions/{id}/ws HTTP/1.1\r\nHost: localhost\r\n\
             Authorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut ws = RawWs {
            stream,
            buffer: Vec::new(),
        };
        let end = loop {
            if let Some(i) = ws.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(ws.fill().await > 0, "closed during the handshake");
        };
        let head = String::from_utf8_lossy(&ws.buffer[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.buffer.drain(..end);
        ws
    }

    /// Reads more bytes into the buffer; 0 at EOF.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(EOF_WITHIN, self.stream.read(&mut chunk))
            .await
            .expect("the server sent something in time")
            .expect("read");
        self.buffer.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next frame from the server (unmasked, unfragmented: the broker sends such).
    async fn frame(&mut self) -> Frame {
        loop {
            if let Some((frame, used)) = parse(&self.buffer) {
                self.buffer.drain(..used);
                return frame;
            }
            assert!(self.fill().await > 0, "EOF before a whole frame");
        }
    }

    /// The next text frame as JSON, skipping pings.
    async fn json(&mut self) -> Value {
        loop {
            let (opcode, payload) = self.frame().await;
            match opcode {
                TEXT => return serde_json::from_slice(&payload).unwrap(),
                CLOSE => panic!("closed early: {payload:?}"),
                _ => continue,
            }
        }
    }

    /// The server's close frame, skipping anything before it; its code, if it has one.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == CLOSE {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// Sends a close frame with `code` (masked, as a client must).
    async fn send_close(&mut self, code: u16) {
        let payload = [&code.to_be_bytes()[..], b"bye"].concat();
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | CLOSE, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Reads (and drops) whatever else comes, until the server's FIN.
    async fn assert_eof(&mut self) {
        let deadline = tokio::time::Instant::now() + EOF_WITHIN;
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("the server closed the TCP connection after the close handshake")
                .expect("a clean close, not a reset");
            if n == 0 {
                return;
            }
        }
    }
}

/// Parses one server frame off the front of `buf`: the frame and the bytes it took.
fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let end = start + len;
    (buf.len() >= end).then(|| ((buf[0] & 0x0f, buf[start..end].to_vec()), end))
}

async fn app() -> TestApp {
    spawn_app_with(|s| s.linger = Duration::from_secs(60)).await
}

#[actix_web::test]
async fn a_clients_close_frame_is_answered_with_its_code_and_the_connection_ends() {
    let app = app().await;
    let created = app.create_session(&["full_name"]).await;
    let (id, token) = (
        created["session_id"].as_str().unwrap(),
        created["session_token"].as_str().unwrap(),
    );
    for code in [1000, 1001, 4321] {
        let mut ws = RawWs::connect(&app, id, token).await;
        assert_eq!(ws.json().await["type"], "snapshot");
        ws.send_close(code).await;
        assert_eq!(
            ws.close_code().await,
            Some(code),
            "the echo carries our code"
        );
        ws.assert_eof().await;
    }
}

#[actix_web::test]
async fn when_close_frames_cross_the_connection_still_ends_at_once() {
    let app = app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
    let mut ws = RawWs::connect(&app, &id, &token).await;
    assert_eq!(ws.json().await["type"], "snapshot");
    let res = app.update(&id, "alice", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    let last = ws.json().await;
    assert_eq!(last["status"], "declined");
    // The server's close frame (1000) is on its way or already here, unread: the client
    // closes too, as if it had not seen it.
    ws.send_close(4000).await;
    assert_eq!(ws.close_code().await, Some(1000));
    ws.assert_eof().await;
}

#[actix_web::test]
async fn a_subscriber_to_an_ended_session_is_disconnected_as_soon_as_it_answers_the_close() {
    let app = app().await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
    let res = app.update(&id, "alice", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    let mut ws = RawWs::connect(&app, &id, &token).await;
    assert_eq!(ws.json().await["status"], "declined");
    assert_eq!(ws.close_code().await, Some(1000));
    ws.send_close(1000).await;
    ws.assert_eof().await;
}

#[actix_web::test]
async fn a_client_that_never_answers_the_servers_close_is_disconnected_after_the_close_timeout() {
    let app = spawn_app_with(|s| {
        s.linger = Duration::from_secs(60);
        s.ws.close_timeout = Duration::from_millis(200);
    })
    .await;
    let (id, token) = app.retrieved_session(&["full_name"], "alice").await;
    let mut ws = RawWs::connect(&app, &id, &token).await;
    assert_eq!(ws.json().await["type"], "snapshot");
    let res = app.update(&id, "alice", &json!({"decision": "deny"})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ws.close_code().await, Some(1000));
    // No close frame back.
    ws.assert_eof().await;
}
