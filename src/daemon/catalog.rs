//! What the daemon holds of its storage and audit trail for the status page and the
//! heartbeat, so that neither reads storage per request: every complete snapshot's summary,
//! refreshed incrementally (one listing, then only the manifests not read before: a manifest
//! never changes), and the audit trail's runs, read again only when the file changed. One
//! refresh at a time; readers get the last complete result and when it was read.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::audit::{AuditLog, RunRecord};
use crate::snapshot;
use crate::storage::Storage;
use crate::web::SnapPoint;

/// Manifests read at once during a refresh.
const READS_AT_ONCE: usize = 8;

/// The snapshot list as last read.
#[derive(Default)]
pub struct Listing {
    pub read_at: Option<DateTime<Utc>>,
    /// Why the last refresh failed (the list is then the one before).
    pub error: Option<String>,
    pub by_db: BTreeMap<String, Arc<[SnapPoint]>>,
}

#[derive(Default)]
pub struct Catalog {
    /// Summaries by manifest key; held while a refresh runs.
    known: tokio::sync::Mutex<HashMap<String, (String, SnapPoint)>>,
    listing: RwLock<Arc<Listing>>,
    audit: Mutex<AuditCache>,
}

#[derive(Default)]
struct AuditCache {
    stamp: Option<(u64, SystemTime)>,
    runs: Arc<Vec<RunRecord>>,
}

fn point(m: &snapshot::Manifest) -> SnapPoint {
    SnapPoint {
        id: m.id.clone(),
        taken_at: m.taken_at,
        finished_at: m.finished_at,
        stored_bytes: m.stored_bytes,
        reason: m.reason.clone(),
        full: m.scope.is_full(),
    }
}

impl Catalog {
    pub fn listing(&self) -> Arc<Listing> {
        self.listing.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the list again unless it was read after `fresh_after` (a refresh already running
    /// is waited for, not repeated).
    pub async fn refresh_unless(&self, storage: &Arc<dyn Storage>, fresh_after: DateTime<Utc>) {
        let mut known = self.known.lock().await;
        if self.listing().read_at.is_some_and(|at| at > fresh_after) {
            return;
        }
        let started = Utc::now();
        let result = Self::read(storage, &mut known).await;
        let previous = self.listing();
        let next = match result {
            Ok(()) => {
                let mut by_db: BTreeMap<String, Vec<SnapPoint>> = BTreeMap::new();
                for (db, p) in known.values() {
                    by_db.entry(db.clone()).or_default().push(p.clone());
                }
                let by_db = by_db
                    .into_iter()
                    .map(|(db, mut v)| {
                        v.sort_by(|a, b| (a.taken_at, &a.id).cmp(&(b.taken_at, &b.id)));
                        (db, Arc::from(v))
                    })
                    .collect();
                Listing { read_at: Some(started), error: None, by_db }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the snapshots for the status page");
                Listing { read_at: previous.read_at, error: Some(e), by_db: previous.by_db.clone() }
            }
        };
        *self.listing.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// Brings `known` in line with the storage: new manifests read, deleted ones forgotten.
    async fn read(
        storage: &Arc<dyn Storage>,
        known: &mut HashMap<String, (String, SnapPoint)>,
    ) -> Result<(), String> {
        let keys = storage.list("").await.map_err(|e| e.to_string())?;
        let keys: Vec<String> = keys.into_iter().filter(|k| snapshot::is_manifest_key(k)).collect();
        let present: std::collections::HashSet<&String> = keys.iter().collect();
        known.retain(|k, _| present.contains(k));
        let loads: Vec<_> = keys
            .iter()
            .filter(|k| !known.contains_key(*k))
            .map(|key| {
                let (key, storage) = (key.clone(), storage.clone());
                async move {
                    let loaded = snapshot::load_manifest(&storage, &key).await;
                    (key, loaded)
                }
            })
            .collect();
        let mut read = futures::stream::iter(loads).buffer_unordered(READS_AT_ONCE);
        while let Some((key, loaded)) = read.next().await {
            match loaded {
                Ok(m) => {
                    known.insert(key, (m.database.clone(), point(&m)));
                }
                Err(snapshot::SnapshotError::Storage(crate::storage::StorageError::NotFound { .. })) => {}
                Err(e) => tracing::warn!(key = %key, error = %e, "skipping an unreadable manifest"),
            }
        }
        Ok(())
    }

    /// Every repair run of the audit trail, oldest first; read again when the file changed.
    pub fn runs(&self, state_dir: &Path) -> Arc<Vec<RunRecord>> {
        let path = state_dir.join(crate::audit::FILE);
        let stamp = std::fs::metadata(&path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
        let mut cache = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        // A run in progress is judged live or interrupted when read: never cached as running.
        let running = cache.runs.iter().any(|r| matches!(r.outcome.as_str(), "started" | "running"));
        if stamp.is_some() && cache.stamp == stamp && !running {
            return cache.runs.clone();
        }
        match AuditLog::new(state_dir).read(None, None) {
            Ok(runs) => {
                *cache = AuditCache { stamp, runs: Arc::new(runs) };
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the audit trail for the status page"),
        }
        cache.runs.clone()
    }
}
