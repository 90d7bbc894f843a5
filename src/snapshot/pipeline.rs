//! The hot path: pg_dump's output → a read-ahead thread → zstd (all cores) → SHA-256 → chunks
//! for the uploader, with bounded buffers. The read-ahead thread keeps draining pg_dump's pipe
//! while the compressing thread waits for a zstd worker or for the uploader (as zstd's own
//! command line does with its I/O threads), so pg_dump and its backend are never held up by a
//! full 1 MiB pipe. Nothing here touches disk, and memory does not grow with the database: the
//! read-ahead holds at most `READ_AHEAD` reads and the channel to the uploader a few chunks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Size of the chunks handed to storage (and the slack its part buffers reserve).
pub const CHUNK: usize = 1024 * 1024;
const READ_BUF: usize = 256 * 1024;
/// Reads buffered between the pipe and the compressor (2 MiB; with the pipe's 1 MiB, enough to
/// ride out a zstd job hand-off; more only adds memory).
const READ_AHEAD: usize = 8;
/// A bigger pipe lets pg_dump run ahead while a compression job is being handed off.
const PIPE_SIZE: i32 = 1024 * 1024;
const JOB_SIZE: u32 = 2 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Stats {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    /// Each table's rows as the archive carried them (the dump only; None when not read).
    pub tables: Option<Vec<super::archive::TableRows>>,
}

/// Compresses `input` to the end and sends the result in chunks. Returns `BrokenPipe` when the
/// receiver is gone (the upload failed or was cancelled), which also stops pg_dump.
pub fn compress(
    mut input: File,
    level: i32,
    threads: u32,
    recipients: &[age::x25519::Recipient],
    tx: mpsc::Sender<Bytes>,
) -> io::Result<Stats> {
    // Best effort: the default 64 KiB pipe still works, only slower.
    unsafe { libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(READ_AHEAD);
    let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_AHEAD + 1);
    let reader = std::thread::Builder::new()
        .name("pgmedic-read".into())
        .spawn(move || read_ahead(&mut input, raw_tx, spare_rx))?;
    let sink = ChunkSink { tx, buf: Vec::with_capacity(CHUNK), hasher: Sha256::new(), stored: 0 };
    // zstd → age (when configured) → SHA-256 and storage.
    let sealed = crate::crypt::Sealed::new(sink, recipients)?;
    let mut enc = zstd::stream::write::Encoder::new(sealed, level)?;
    enc.include_checksum(true)?;
    let workers = if threads == 0 { cores() } else { threads };
    if workers > 1 {
        enc.multithread(workers)?;
        // The default job (4x the window, ~8 MiB at level 3) is held in and out by every worker;
        // smaller jobs keep the daemon's memory small at a negligible cost in ratio.
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
    }
    let mut raw = 0u64;
    // Ends when the reader hangs up: at the end of pg_dump's output, or on a read error.
    for (buf, n) in raw_rx.iter() {
        raw += n as u64;
        enc.write_all(&buf[..n])?; // on error raw_rx is dropped, and the reader stops too
        let _ = spare_tx.try_send(buf); // back to the reader, so no buffer is allocated twice
    }
    let counter = reader.join().map_err(|_| io::Error::other("the read-ahead thread panicked"))??;
    let mut sink = enc.finish()?.finish()?;
    sink.send()?;
    Ok(Stats {
        raw_bytes: raw,
        stored_bytes: sink.stored,
        sha256: hex::encode(sink.hasher.finalize()),
        tables: counter.finish(),
    })
}

/// Reads `input` to its end into buffers for the compressor, reusing the ones it hands back
/// (a fresh zeroed buffer per read would cost a memset of the whole dump); stops early when the
/// compressor hangs up. The rows of each table are counted here, on the thread that otherwise
/// waits on the pipe, not on the compressor's.
fn read_ahead(
    input: &mut File,
    out: std::sync::mpsc::SyncSender<(Vec<u8>, usize)>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
) -> io::Result<super::archive::RowCounter> {
    let mut counter = super::archive::RowCounter::new();
    loop {
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0u8; READ_BUF]);
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(counter),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counter.feed(&buf[..n]);
        if out.send((buf, n)).is_err() {
            return Ok(counter); // the compressor failed; its error is the one reported
        }
    }
}

/// Compresses a small in-memory object (the cluster's globals) with the same settings.
pub fn compress_small(
    data: &[u8],
    level: i32,
    recipients: &[age::x25519::Recipient],
) -> io::Result<(Bytes, Stats)> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    enc.include_checksum(true)?;
    enc.write_all(data)?;
    let out = crate::crypt::seal(&enc.finish()?, recipients)?;
    let stats = Stats {
        raw_bytes: data.len() as u64,
        stored_bytes: out.len() as u64,
        sha256: hex::encode(Sha256::digest(&out)),
        tables: None,
    };
    Ok((Bytes::from(out), stats))
}

pub fn cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

struct ChunkSink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    hasher: Sha256,
    stored: u64,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.stored += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
