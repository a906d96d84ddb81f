//! WebSocket subscribers as a client app runs them: a plain one, and one that, when its
//! node goes away, reconnects to another node with `after_seq` (SPEC §3, §7).

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one frame may take to arrive on a loaded two-core machine.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);

/// The subscription URL on the node at `address` (`http://…`).
pub fn ws_url(address: &str, id: &str, token: &str, after_seq: Option<u64>) -> String {
    let mut url = format!(
        "{}/v1/sessions/{id}/ws?token={token}",
        address.replacen("http://", "ws://", 1)
    );
    if let Some(n) = after_seq {
        url.push_str(&format!("&after_seq={n}"));
    }
    url
}

pub async fn connect(address: &str, id: &str, token: &str, after_seq: Option<u64>) -> Ws {
    let url = ws_url(address, id, token, after_seq);
    let (ws, res) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("handshake to {url}: {e}"));
    assert_eq!(res.status(), 101);
    ws
}

/// What a read gave: a JSON frame, or how the connection ended.
#[derive(Debug)]
pub enum Read {
    Frame(Value),
    /// A close frame with this code.
    Closed(Option<CloseCode>),
    /// The connection ended without a close frame (the node died).
    Dropped,
}

/// The next text frame (pings and pongs skipped), bounded by [`FRAME_DEADLINE`].
pub async fn next(ws: &mut Ws) -> Read {
    next_within(ws, FRAME_DEADLINE).await
}

/// The next text frame (pings and pongs skipped), bounded by `within`.
pub async fn next_within(ws: &mut Ws, within: Duration) -> Read {
    let until = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(until, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame and no close within {within:?}"));
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Read::Frame(serde_json::from_str(&t).expect("a JSON frame"))
            }
            Some(Ok(Message::Close(c))) => return Read::Closed(c.map(|c| c.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Read::Dropped,
        }
    }
}

/// The next text frame; panics on anything else.
pub async fn frame(ws: &mut Ws) -> Value {
    match next(ws).await {
        Read::Frame(v) => v,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Every frame until the close, and the close.
pub async fn drain(ws: &mut Ws) -> (Vec<Value>, Read) {
    let mut frames = Vec::new();
    loop {
        match next(ws).await {
            Read::Frame(f) => frames.push(f),
            end => return (frames, end),
        }
    }
}

/// A `status` frame as a subscriber got it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub seq: u64,
    pub status: String,
    /// The transition's time (`at`).
    pub at: chrono::DateTime<chrono::Utc>,
    /// When it arrived here.
    pub arrived: chrono::DateTime<chrono::Utc>,
}

/// What a reconnecting subscriber saw over all its connections.
#[derive(Debug, Default)]
pub struct Watched {
    /// The `seq` of the first snapshot: status frames follow from the next one.
    pub first_snapshot_seq: u64,
    /// Every status frame, in arrival order, over every connection.
    pub seen: Vec<Seen>,
    /// The node (index) of each connection, in order.
    pub connections: Vec<usize>,
    /// How each connection but the last ended: a close code, or `None` (dropped).
    pub interruptions: Vec<Option<u16>>,
    /// Whether the last connection ended with close 1000 (the session is over).
    pub finished: bool,
    /// Handshakes refused or failed on the way (which the client retried).
    pub failed_handshakes: Vec<String>,
}

impl Watched {
    /// The status frames' seqs, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.seen.iter().map(|s| s.seq).collect()
    }

    /// Asserts that the frames are exactly the transitions after the first snapshot up
    /// to `last_seq` (committed), each once, in order, and that the session ended.
    pub fn assert_complete(&self, what: &str, last_seq: u64) {
        let want: Vec<u64> = (self.first_snapshot_seq + 1..=last_seq).collect();
        assert_eq!(
            self.seqs(),
            want,
            "{what}: every transition once, in order, across reconnects {:?} \
             (interruptions {:?}, refused handshakes {:?})",
            self.connections,
            self.interruptions,
            self.failed_handshakes
        );
        assert!(
            self.finished,
            "{what}: the last connection closes with 1000"
        );
    }
}

/// Subscribes to a session on node `start` of `addresses` and follows it to its end:
/// when the connection drops or closes with anything but 1000, waits for `gate` (if
/// any) to be open, then reconnects to the next node with `after_seq` = the last seq
/// it has; a refused handshake (a node that is gone, `503`) moves on to the next node
/// after 100 ms. Ends at close 1000 or at `deadline`. Counts itself in `ready` once its
/// first snapshot arrived.
pub async fn follow(
    addresses: Vec<String>,
    start: usize,
    id: String,
    token: String,
    mut gate: Option<tokio::sync::watch::Receiver<bool>>,
    ready: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    deadline: Duration,
) -> Watched {
    let until = tokio::time::Instant::now() + deadline;
    let mut w = Watched::default();
    let mut node = start;
    let mut last: Option<u64> = None;
    while tokio::time::Instant::now() < until {
        let url = ws_url(&addresses[node], &id, &token, last);
        let ws = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await;
        let mut ws = match ws {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                w.failed_handshakes.push(format!("node {node}: {e}"));
                node = (node + 1) % addresses.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                w.failed_handshakes
                    .push(format!("node {node}: handshake timed out"));
                node = (node + 1) % addresses.len();
                continue;
            }
        };
        w.connections.push(node);
        let ended = loop {
            let msg = match tokio::time::timeout_at(until, ws.next()).await {
                Ok(m) => m,
                Err(_) => return w,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("a JSON frame");
                    if v["type"] == "snapshot" {
                        let seq = v["seq"].as_u64().expect("snapshot seq");
                        if last.is_none() {
                            w.first_snapshot_seq = seq;
                            last = Some(seq);
                            ready.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        }
                    } else if v["type"] == "status" {
                        let seq = v["seq"].as_u64().expect("status seq");
                        w.seen.push(Seen {
                            seq,
                            status: v["status"].as_str().unwrap_or("").to_owned(),
                            at: crate::helpers::time(&v["at"]),
                            arrived: chrono::Utc::now(),
                        });
                        // Resume after the highest seen: a duplicate or a gap stays
                        // visible in `seen`, and the assertions name it.
                        last = Some(last.map_or(seq, |l| l.max(seq)));
                    }
                }
                Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        };
        if ended == Some(1000) {
            w.finished = true;
            return w;
        }
        w.interruptions.push(ended);
        if let Some(gate) = gate.as_mut() {
            let _ = tokio::time::timeout_at(until, gate.wait_for(|open| *open)).await;
        }
        node = (node + 1) % addresses.len();
    }
    w
}
