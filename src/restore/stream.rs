//! Reading a stored dump back: storage → SHA-256 → (age) → zstd → a sink, with the last bytes of the
//! decompressed stream held back until the whole object's hash has matched the manifest. Fed
//! to `pg_restore --single-transaction`, that means a corrupt object can never be committed:
//! pg_restore cannot finish its last block, and is killed instead.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::progress::Progress;
use super::RestoreError;
use crate::snapshot::{Manifest, CHUNK};
use crate::storage::Storage;

/// Enough to hold back the end of pg_restore's last data block and the archive's trailer.
const HOLD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// The sink must take every byte (pg_restore restoring).
    Strict,
    /// The sink may stop reading early (pg_restore --list); the rest is still checked.
    MayClose,
}

enum Msg {
    Data(Bytes),
    End { verified: bool },
}

#[derive(Debug, Clone, Copy)]
pub struct Streamed {
    pub stored_bytes: u64,
    pub raw_bytes: u64,
}

/// Streams `m`'s object into `sink`; errors when it does not match the manifest.
/// `keys`: the age identities, for an encrypted snapshot.
pub async fn stream_object(
    storage: &Arc<dyn Storage>,
    m: &Manifest,
    sink: File,
    mode: SinkMode,
    progress: &Progress,
    keys: Option<Vec<age::x25519::Identity>>,
) -> Result<Streamed, RestoreError> {
    let mut reader = storage.open(&m.object_key()).await?;
    let (tx, rx) = mpsc::channel::<Msg>(4);
    let thread = tokio::task::spawn_blocking(move || decode(rx, sink, mode, keys));
    let mut hasher = Sha256::new();
    let mut stored = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut decoder_gone = false;
    let read_result: Result<(), RestoreError> = loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => {
                break Err(RestoreError::Read { id: m.id.clone(), message: e.to_string() });
            }
        };
        hasher.update(&buf[..n]);
        stored += n as u64;
        progress.add(n as u64);
        if tx.send(Msg::Data(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
            decoder_gone = true; // corrupt data or a dead reader: the decoder's error says which
            break Ok(());
        }
    };
    let actual = hex::encode(hasher.finalize());
    let verified = read_result.is_ok() && actual == m.sha256 && stored == m.stored_bytes;
    let _ = tx.send(Msg::End { verified }).await;
    drop(tx);
    let decoded = thread.await.map_err(|e| io::Error::other(e.to_string())).and_then(|r| r);
    read_result?;
    if decoder_gone {
        let message = decoded.err().map(|e| e.to_string()).unwrap_or_else(|| "stopped early".into());
        return Err(RestoreError::Decode { id: m.id.clone(), message });
    }
    if !verified {
        return Err(RestoreError::mismatch(m, actual, stored));
    }
    let raw_bytes = decoded.map_err(|e| RestoreError::Decode { id: m.id.clone(), message: e.to_string() })?;
    Ok(Streamed { stored_bytes: stored, raw_bytes })
}

fn decode(
    rx: mpsc::Receiver<Msg>,
    sink: File,
    mode: SinkMode,
    keys: Option<Vec<age::x25519::Identity>>,
) -> io::Result<u64> {
    let mut dec = zstd::stream::write::Decoder::new(HoldBack::new(sink, mode))?;
    let mut input = Incoming { rx, current: Bytes::new(), verified: false };
    match &keys {
        Some(keys) => {
            let mut plain = crate::crypt::open(&mut input, keys)?;
            io::copy(&mut plain, &mut dec)?;
        }
        // Plain snapshots: each stored chunk straight into the decoder, as before encryption.
        None => {
            while input.next()? {
                dec.write_all(&input.current)?;
                input.current.clear();
            }
        }
    }
    // age knows its last chunk without reading on: wait for the hash's verdict all the same.
    input.finish()?;
    dec.flush()?;
    let mut out = dec.into_inner();
    out.release()?;
    Ok(out.count)
}

/// The stored bytes as a reader; its end is the hash's verdict (an unverified end is an error,
/// so the sink is never released).
struct Incoming {
    rx: mpsc::Receiver<Msg>,
    current: Bytes,
    verified: bool,
}

impl Incoming {
    fn next(&mut self) -> io::Result<bool> {
        match self.rx.blocking_recv() {
            Some(Msg::Data(b)) => {
                self.current = b;
                Ok(true)
            }
            Some(Msg::End { verified: true }) => {
                self.verified = true;
                Ok(false)
            }
            // Dropping the sink unreleased: the reader never sees the end of the archive.
            Some(Msg::End { verified: false }) => {
                Err(io::Error::other("stored object does not match its manifest"))
            }
            None => Err(io::Error::other("the stored object ended early")),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        while !self.verified {
            if self.next()? && !self.current.is_empty() {
                return Err(io::Error::other("the stored object has bytes after its end"));
            }
        }
        Ok(())
    }
}

impl io::Read for Incoming {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.verified || !self.next()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

struct HoldBack {
    inner: Option<File>,
    held: Vec<u8>,
    mode: SinkMode,
    count: u64,
}

impl HoldBack {
    fn new(inner: File, mode: SinkMode) -> Self {
        HoldBack { inner: Some(inner), held: Vec::with_capacity(HOLD + CHUNK), mode, count: 0 }
    }

    fn pass(&mut self, upto: usize) -> io::Result<()> {
        if let Some(f) = self.inner.as_mut() {
            match f.write_all(&self.held[..upto]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe && self.mode == SinkMode::MayClose => {
                    self.inner = None
                }
                Err(e) => return Err(e),
            }
        }
        self.held.drain(..upto);
        Ok(())
    }

    /// The hash matched: hand over the held tail and close the sink.
    fn release(&mut self) -> io::Result<()> {
        self.pass(self.held.len())?;
        self.inner = None;
        Ok(())
    }
}

impl Write for HoldBack {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.count += data.len() as u64;
        self.held.extend_from_slice(data);
        if self.held.len() >= HOLD + CHUNK {
            self.pass(self.held.len() - HOLD)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
