//! A TCP fault proxy for putting a bad network between pgmedic and PostgreSQL or S3: it listens
//! on 127.0.0.1 (port 0), forwards every connection to one upstream address, and on request cuts
//! the open connections, stalls all traffic, resets connections that carried a large upload, or
//! throttles throughput. Counters let a test wait for "a few MiB have gone through" instead of
//! sleeping. It runs on its own thread and tokio runtime, because the tests are synchronous.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

const BUF: usize = 64 * 1024;

/// A running proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Commands for the accept loop; dropping the sender stops it.
    cmds: Option<mpsc::UnboundedSender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

/// State the test thread and every connection share.
struct Shared {
    upstream: SocketAddr,
    stalled: watch::Sender<bool>,
    /// Bytes per second per direction per connection; 0 is unlimited.
    rate: AtomicU64,
    resets_left: AtomicUsize,
    reset_threshold: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    accepted: AtomicU64,
    resets_done: AtomicU64,
}

enum Cmd {
    /// Close every open connection, then answer on the channel.
    Cut(std::sync::mpsc::Sender<()>),
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Up,
    Down,
}

/// Why one direction of a connection stopped early.
enum End {
    Io,
    Reset,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            stalled: watch::Sender::new(false),
            rate: AtomicU64::new(0),
            resets_left: AtomicUsize::new(0),
            reset_threshold: AtomicU64::new(u64::MAX),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            resets_done: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(accept_loop(listener, s, rx));
            // Dropping the runtime drops the connection tasks, and with them their sockets.
        });
        Proxy { addr, shared, cmds: Some(tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection open now, both sides, and returns once they are closed; later
    /// connections are accepted and forwarded as usual.
    pub fn cut(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cmds.as_ref().unwrap().send(Cmd::Cut(tx)).expect("the proxy is running");
        rx.recv().expect("the proxy answers a cut");
    }

    /// While stalled nothing is forwarded either way (new connections are accepted and sit idle),
    /// like a network that drops every packet. A chunk already being written may still land.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// The next `count` connections that carry more than `threshold_bytes` towards the upstream
    /// are reset (the client sees ECONNRESET) as soon as they pass it.
    pub fn reset_after(&self, count: usize, threshold_bytes: u64) {
        self.shared.reset_threshold.store(threshold_bytes, SeqCst);
        self.shared.resets_left.store(count, SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec`; `None` lifts the limit.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared.rate.store(bytes_per_sec.unwrap_or(0), SeqCst);
    }

    /// Bytes forwarded upstream → client, over all connections.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(SeqCst)
    }

    /// Bytes forwarded client → upstream, over all connections.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(SeqCst)
    }

    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(SeqCst)
    }

    pub fn resets_done(&self) -> u64 {
        self.shared.resets_done.load(SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A stalled connection waits on the flag; the runtime's drop ends it either way.
        self.cmds.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections into one JoinSet, so that a cut can abort them all and wait for them.
async fn accept_loop(listener: StdListener, shared: Arc<Shared>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let listener = TcpListener::from_std(listener).unwrap();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    shared.accepted.fetch_add(1, SeqCst);
                    conns.spawn(serve(client, shared.clone()));
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Cut(done)) => {
                    conns.abort_all();
                    // Each aborted task has dropped its two sockets once it is joined.
                    while conns.join_next().await.is_some() {}
                    let _ = done.send(());
                }
                None => return,
            },
            // Reaps finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Forwards one connection both ways until both sides have finished, one fails, or it is reset.
async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    // A stalled network does not reach the upstream either.
    unstalled(&mut shared.stalled.subscribe()).await;
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else { return };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let outcome = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = pump(&mut cr, &mut uw, &shared, Dir::Up);
        let down = pump(&mut ur, &mut cw, &shared, Dir::Down);
        tokio::try_join!(up, down)
    };
    if let Err(End::Reset) = outcome {
        // Zero linger turns the close into an RST: the client's next read or write fails.
        let _ = client.set_zero_linger();
        shared.resets_done.fetch_add(1, SeqCst);
    }
}

/// Copies one direction; on end of stream passes the half-close on.
async fn pump<R, W>(r: &mut R, w: &mut W, shared: &Shared, dir: Dir) -> Result<(), End>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut stalled = shared.stalled.subscribe();
    let mut pace = Pace { since: Instant::now(), bytes: 0, rate: 0 };
    let mut carried = 0u64;
    loop {
        unstalled(&mut stalled).await;
        let rate = shared.rate.load(SeqCst);
        // Small reads under a throttle keep the pacing smooth.
        let max = if rate == 0 { BUF } else { (rate / 20).clamp(1024, BUF as u64) as usize };
        let n = r.read(&mut buf[..max]).await.map_err(|_| End::Io)?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        // What was read while the stall began waits for its end too.
        unstalled(&mut stalled).await;
        w.write_all(&buf[..n]).await.map_err(|_| End::Io)?;
        carried += n as u64;
        let total = if dir == Dir::Up { &shared.bytes_up } else { &shared.bytes_down };
        total.fetch_add(n as u64, SeqCst);
        if dir == Dir::Up && carried > shared.reset_threshold.load(SeqCst) && claim_reset(shared) {
            return Err(End::Reset);
        }
        pace.after(n as u64, rate).await;
    }
}

fn claim_reset(shared: &Shared) -> bool {
    shared.resets_left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
}

async fn unstalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stalled| !*stalled).await;
}

/// Keeps one direction at `rate` bytes per second on average since the rate was last changed.
struct Pace {
    since: Instant,
    bytes: u64,
    rate: u64,
}

impl Pace {
    async fn after(&mut self, n: u64, rate: u64) {
        if rate != self.rate {
            *self = Pace { since: Instant::now(), bytes: 0, rate };
        }
        if rate == 0 {
            return;
        }
        self.bytes += n;
        let due = self.since + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}
