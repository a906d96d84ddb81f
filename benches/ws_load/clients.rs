//! The WebSocket subscribers of `ws_load`, in several client processes (issue 28).
//!
//! A process here may hold at most 20,000 open files, and the hard limit cannot be
//! raised: one process cannot open the 19,000 subscribers one node can hold (let alone
//! 57,000 over three). So the bench re-executes itself as client workers
//! (`ws_load --ws-worker EPOCH_US CONCURRENCY`, a hidden mode), each with at most
//! `--clients-per-process` subscribers:
//!
//! - the parent writes a worker its subscribers' URLs on stdin (a count, then one per
//!   line); the worker opens them (at most `CONCURRENCY` handshakes in flight), reads
//!   each one's snapshot, and reports `ready K` as they come, `failed I CLASS MESSAGE`
//!   for each that could not connect, and `connected` once every one is open or failed;
//! - the parent reads `stop DEADLINE_US` to the worker once the transitions are sent;
//!   the worker then reports every frame as `seen I SEQ AT_US` (and `error I MESSAGE`
//!   for a subscriber that broke), then `done`, and exits.
//!
//! One clock for all: microseconds of `CLOCK_REALTIME` (`SystemTime`) since the
//! parent's epoch, handed to every worker; the transitions' marks and the frames'
//! arrival times are read on the same clock, in whichever process.
//!
//! A failed handshake is classified ([`classify`]) so that a run at the machine's
//! limits says which one it hit: the client's open files (`EMFILE`), the ephemeral
//! ports (`EADDRNOTAVAIL`), the broker's `--max-websockets` (`503`), the listen backlog
//! (refused, reset, or timed out while the broker still had descriptors), or the
//! broker's own open files.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// What one subscriber saw: (seq, received at µs on the shared clock).
pub(crate) type Seen = Vec<(u64, u64)>;

/// How long one handshake may take before it counts as failed (a full listen backlog
/// shows as SYNs retried for seconds).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Microseconds since an epoch on `CLOCK_REALTIME`, the same in every process of a run;
/// 0 means "not yet", so every reading is at least 1.
pub(crate) struct Clock {
    epoch_us: u64,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch_us: unix_us(),
        }
    }
    fn at(epoch_us: u64) -> Self {
        Clock { epoch_us }
    }
    pub(crate) fn us(&self) -> u64 {
        unix_us().saturating_sub(self.epoch_us) + 1
    }
}

/// A failed handshake's kind: which limit it points at.
pub(crate) fn classify(error: &str) -> &'static str {
    if error.contains("os error 24") {
        "EMFILE: a client process ran out of open files"
    } else if error.contains("os error 99") {
        "EADDRNOTAVAIL: the ephemeral ports to this address are used up \
         (net.ipv4.ip_local_port_range)"
    } else if error.contains("503") {
        "503: the broker refused the WebSocket (--max-websockets, or its per-session limit)"
    } else if error.contains("os error 111") {
        "ECONNREFUSED: nothing listening, or the listen backlog overflowed \
         (net.core.somaxconn, tcp_abort_on_overflow)"
    } else if error.contains("os error 104") || error.contains("reset") {
        "ECONNRESET: the broker reset the connection (listen backlog overflow, or it \
         could not accept: out of open files?)"
    } else if error.contains("timed out") {
        "timeout: the handshake took over 60 s (listen backlog full, or the broker \
         stopped accepting: out of open files?)"
    } else {
        "other"
    }
}

/// Opens a subscriber, waits for its snapshot, reports itself ready, then records every
/// status frame until the close (or the deadline).
async fn subscriber(
    url: String,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: Arc<AtomicUsize>,
    clock: Arc<Clock>,
    mut stop_at: tokio::sync::watch::Receiver<u64>,
) -> Result<Seen, String> {
    // Small client buffers: the bench shares the box with the broker it measures.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), false),
    )
    .await
    .map_err(|_| "connect: timed out".to_owned())?
    .map_err(|e| format!("connect: {e}"))?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"snapshot\"") => {}
        Err(_) => return Err("snapshot: timed out".to_owned()),
        Ok(other) => return Err(format!("first frame: {other:?}")),
    }
    ready.fetch_add(1, Ordering::AcqRel);
    // The permit bounds handshakes in flight, not open sockets.
    drop(permit);
    let mut seen = Vec::with_capacity(2);
    loop {
        // Until the parent names the deadline, a subscriber waits for a frame or for
        // the deadline, with no timer: a wake-up a second for each of tens of
        // thousands of subscribers would take a core from the brokers it measures.
        let deadline = *stop_at.borrow_and_update();
        let next = if deadline == 0 {
            tokio::select! {
                named = stop_at.changed() => {
                    if named.is_err() {
                        break;
                    }
                    continue;
                }
                next = ws.next() => Ok(next),
            }
        } else {
            let wait = Duration::from_micros(deadline.saturating_sub(clock.us()));
            tokio::time::timeout(wait, ws.next()).await
        };
        match next {
            Err(_) => break,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(Message::Text(t)))) => {
                let at = clock.us();
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                seen.push((v["seq"].as_u64().unwrap_or(0), at));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(seen)
}

/// The hidden worker mode: `ws_load --ws-worker EPOCH_US CONCURRENCY`, the protocol
/// of the module's documentation on stdin and stdout.
pub(crate) fn worker(mut args: impl Iterator<Item = String>) {
    let epoch: u64 = args.next().and_then(|v| v.parse().ok()).expect("EPOCH_US");
    let concurrency: usize = args
        .next()
        .and_then(|v| v.parse().ok())
        .expect("CONCURRENCY");
    // One thread: the parallelism is in the number of workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let n: usize = lines
            .next_line()
            .await
            .unwrap()
            .and_then(|l| l.parse().ok())
            .expect("a count first");
        let mut urls = Vec::with_capacity(n);
        for _ in 0..n {
            urls.push(lines.next_line().await.unwrap().expect("a URL"));
        }
        let mut out = tokio::io::stdout();
        let clock = Arc::new(Clock::at(epoch));
        let ready = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_at) = tokio::sync::watch::channel(0u64);
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut subs = Vec::with_capacity(n);
        for url in urls {
            let (ready, clock, stop_at, sem) =
                (ready.clone(), clock.clone(), stop_at.clone(), sem.clone());
            subs.push(tokio::spawn(async move {
                let permit = sem.acquire_owned().await.unwrap();
                subscriber(url, permit, ready, clock, stop_at).await
            }));
        }
        // Progress until every subscriber is open or failed.
        let mut reported = vec![false; n];
        let mut last_ready = usize::MAX;
        loop {
            let r = ready.load(Ordering::Acquire);
            let mut failed = 0;
            let mut msg = String::new();
            for (i, t) in subs.iter_mut().enumerate() {
                if t.is_finished() {
                    failed += 1;
                    if !reported[i] {
                        reported[i] = true;
                        let e = match t.await {
                            Ok(Err(e)) => e,
                            Ok(Ok(_)) => "closed before the stop".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        let e = e.replace('\n', " ");
                        msg.push_str(&format!("failed {i} {}\t{e}\n", classify(&e)));
                    }
                }
            }
            if r != last_ready {
                msg.push_str(&format!("ready {r}\n"));
                last_ready = r;
            }
            if !msg.is_empty() {
                out.write_all(msg.as_bytes()).await.unwrap();
                out.flush().await.unwrap();
            }
            if r + failed >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.write_all(b"connected\n").await.unwrap();
        out.flush().await.unwrap();

        let stop = lines.next_line().await.unwrap().unwrap_or_default();
        let at: u64 = stop
            .strip_prefix("stop ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let _ = stop_tx.send(at);
        let mut buf = String::new();
        for (i, t) in subs.into_iter().enumerate() {
            if reported[i] {
                continue;
            }
            match t.await {
                Ok(Ok(seen)) => {
                    for (seq, at) in seen {
                        buf.push_str(&format!("seen {i} {seq} {at}\n"));
                    }
                }
                Ok(Err(e)) => buf.push_str(&format!("error {i} {}\n", e.replace('\n', " "))),
                Err(e) => buf.push_str(&format!("error {i} {e}\n")),
            }
            if buf.len() > 64 * 1024 {
                out.write_all(buf.as_bytes()).await.unwrap();
                buf.clear();
            }
        }
        buf.push_str("done\n");
        out.write_all(buf.as_bytes()).await.unwrap();
        out.flush().await.unwrap();
    });
}

/// What the parent knows of one worker, filled by its reader task.
#[derive(Default)]
struct Progress {
    ready: usize,
    failed: usize,
    connected: bool,
    done: bool,
    /// Failures by class: count and the first message.
    failures: BTreeMap<&'static str, (usize, String)>,
    seen: Vec<(usize, u64, u64)>,
    errors: Vec<(usize, String)>,
    /// The worker's output ended before `done`.
    gone: bool,
}

struct Worker {
    first: usize,
    count: usize,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    progress: Arc<Mutex<Progress>>,
}

/// The subscribers of a run, over their client processes.
pub(crate) struct Clients {
    n: usize,
    workers: Vec<Worker>,
}

/// Subscribers per client process by default: under the 20,000 open files a process
/// may hold, with room for the runtime's own.
pub(crate) const CLIENTS_PER_PROCESS: usize = 7000;

impl Clients {
    /// Starts the workers and hands each its share of `urls` (subscriber `i` opens
    /// `urls[i]`), at most `per_process` each, `concurrency` handshakes in flight in all.
    pub(crate) async fn open(
        urls: Vec<String>,
        clock: &Clock,
        per_process: usize,
        concurrency: usize,
    ) -> Clients {
        let n = urls.len();
        let k = n.div_ceil(per_process.max(1)).max(1);
        let exe = std::env::current_exe().unwrap();
        let per = n.div_ceil(k);
        let mut workers = Vec::with_capacity(k);
        let mut first = 0;
        while first < n {
            let count = per.min(n - first);
            let mut child = tokio::process::Command::new(&exe)
                .arg("--ws-worker")
                .arg(clock.epoch_us.to_string())
                .arg(concurrency.div_ceil(k).to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start a client worker {exe:?}: {e}"));
            let mut stdin = child.stdin.take().unwrap();
            let mut list = format!("{count}\n");
            for u in &urls[first..first + count] {
                list.push_str(u);
                list.push('\n');
            }
            stdin.write_all(list.as_bytes()).await.unwrap();
            stdin.flush().await.unwrap();
            let progress = Arc::new(Mutex::new(Progress::default()));
            let stdout = child.stdout.take().unwrap();
            tokio::spawn(read_worker(stdout, first, progress.clone()));
            workers.push(Worker {
                first,
                count,
                child,
                stdin,
                progress,
            });
            first += count;
        }
        Clients { n, workers }
    }

    pub(crate) fn processes(&self) -> usize {
        self.workers.len()
    }

    /// Waits until every subscriber read its snapshot; else says which ones failed and
    /// why (by class, with the first message of each), within `timeout`.
    pub(crate) async fn connected(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (mut ready, mut failed, mut all_reported) = (0, 0, true);
            let mut failures: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
            for w in &self.workers {
                let p = w.progress.lock().unwrap();
                ready += p.ready;
                failed += p.failed;
                all_reported &= p.connected || p.gone;
                for (class, (c, msg)) in &p.failures {
                    let e = failures.entry(*class).or_insert((0, msg.clone()));
                    e.0 += c;
                }
            }
            if ready == self.n {
                return Ok(());
            }
            let timed_out = tokio::time::Instant::now() > deadline;
            if all_reported || timed_out {
                let mut why = format!(
                    "{ready} of {} subscribers connected, {failed} failed{}",
                    self.n,
                    if timed_out && !all_reported {
                        " (the rest still connecting when the wait ended)"
                    } else {
                        ""
                    }
                );
                for (class, (c, msg)) in failures {
                    why.push_str(&format!("\n  {c} × {class}\n    first: {msg}"));
                }
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells every worker the deadline for the last frames, waits for their reports,
    /// and answers each subscriber's frames (or its error), by subscriber index.
    pub(crate) async fn finish(mut self, stop_at_us: u64) -> Vec<Result<Seen, String>> {
        for w in &mut self.workers {
            // A worker that already exited (all its subscribers failed) reads no stop.
            let _ = w
                .stdin
                .write_all(format!("stop {stop_at_us}\n").as_bytes())
                .await;
            let _ = w.stdin.flush().await;
        }
        let mut out: Vec<Result<Seen, String>> =
            (0..self.n).map(|_| Ok(Vec::with_capacity(2))).collect();
        for w in &mut self.workers {
            loop {
                {
                    let p = w.progress.lock().unwrap();
                    if p.done || p.gone {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = w.child.wait().await;
            let mut p = w.progress.lock().unwrap();
            if !p.done {
                for slot in &mut out[w.first..w.first + w.count] {
                    *slot = Err("the client worker ended early".to_owned());
                }
            }
            for (i, seq, at) in std::mem::take(&mut p.seen) {
                if let Ok(seen) = &mut out[i] {
                    seen.push((seq, at));
                }
            }
            for (i, e) in std::mem::take(&mut p.errors) {
                out[i] = Err(e);
            }
        }
        out
    }
}

/// Reads one worker's reports into `progress`; indexes become the run's (`first` +).
async fn read_worker(
    stdout: tokio::process::ChildStdout,
    first: usize,
    progress: Arc<Mutex<Progress>>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut p = progress.lock().unwrap();
        let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match word {
            "ready" => p.ready = rest.parse().unwrap_or(p.ready),
            "failed" => {
                p.failed += 1;
                let (i, rest) = rest.split_once(' ').unwrap_or(("0", rest));
                let (class, msg) = rest.split_once('\t').unwrap_or((rest, ""));
                let class = classify_known(class);
                let i: usize = i.parse().unwrap_or(0);
                p.errors.push((first + i, msg.to_owned()));
                p.failures.entry(class).or_insert((0, msg.to_owned())).0 += 1;
            }
            "connected" => p.connected = true,
            "seen" => {
                let mut f = rest.split(' ').map(|v| v.parse::<u64>().unwrap_or(0));
                let (i, seq, at) = (
                    f.next().unwrap_or(0),
                    f.next().unwrap_or(0),
                    f.next().unwrap_or(0),
                );
                p.seen.push((first + i as usize, seq, at));
            }
            "error" => {
                let (i, msg) = rest.split_once(' ').unwrap_or((rest, ""));
                p.errors
                    .push((first + i.parse::<usize>().unwrap_or(0), msg.to_owned()));
            }
            "done" => p.done = true,
            _ => {}
        }
    }
    progress.lock().unwrap().gone = true;
}

/// The worker's class text back to the static string it came from.
fn classify_known(class: &str) -> &'static str {
    const CLASSES: [&str; 6] = [
        "EMFILE",
        "EADDRNOTAVAIL",
        "503",
        "ECONNREFUSED",
        "ECONNRESET",
        "timeout",
    ];
    for c in CLASSES {
        if class.starts_with(c) {
            return classify(match c {
                "EMFILE" => "os error 24",
                "EADDRNOTAVAIL" => "os error 99",
                "503" => "503",
                "ECONNREFUSED" => "os error 111",
                "ECONNRESET" => "os error 104",
                _ => "timed out",
            });
        }
    }
    "other"
}

/// A broker's open descriptors against its limit, for a run that failed to connect:
/// whether it was the broker that ran out.
pub(crate) fn broker_fds(pid: Option<u32>) -> String {
    let Some(pid) = pid else {
        return "broker's descriptors: unknown (no --pid)".to_owned();
    };
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".to_owned());
    format!("broker pid {pid} holds {open} open files of its limit {limit}")
}
