//! `verify`: re-hash the stored object, decompress it whole, and have pg_restore read the
//! archive's table of contents, all without a database; `--deep` also restores it into a
//! scratch database on the scratch server (pgmedic's own ephemeral cluster unless configured
//! otherwise, never the production server by default) and drops that again.

use std::ffi::OsString;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::stream::{stream_object, SinkMode};
use super::{Progress, RestoreError, RestoreOptions, Restorer};
use crate::pg::{self, scratch, Pipes};
use crate::scratch::{Access, Server};
use crate::snapshot::Manifest;

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub database: String,
    pub sha256: String,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub toc_entries: u64,
    pub deep: Option<DeepReport>,
    /// What could not be checked (an encrypted snapshot without its identity).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeepReport {
    /// `ephemeral`, `source`, or the scratch server's URL without its password.
    pub scratch_server: String,
    pub scratch_database: String,
    pub tables: i64,
    pub seconds: f64,
    /// Every table's rows on the restored copy against the manifest's (None: it records none).
    pub rows: Option<RowCheck>,
}

/// The restored copy's row counts compared with what the snapshot's manifest says was dumped.
#[derive(Debug, Clone, Serialize)]
pub struct RowCheck {
    pub tables: usize,
    pub rows: u64,
    pub mismatches: Vec<RowMismatch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RowMismatch {
    pub schema: String,
    pub table: String,
    pub dumped: u64,
    /// None: the table is missing from the restored copy.
    pub restored: Option<u64>,
}

impl RowMismatch {
    pub fn text(&self) -> String {
        match self.restored {
            Some(n) => format!("{}.{}: {} rows dumped, {n} restored", self.schema, self.table, self.dumped),
            None => format!(
                "{}.{}: missing from the restored copy ({} rows dumped)",
                self.schema, self.table, self.dumped
            ),
        }
    }
}

impl RowCheck {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Counts each of the manifest's tables on `url` (`ONLY`: an inheritance parent's own rows, as
/// pg_dump dumps them).
async fn check_rows(url: &crate::config::DbUrl, m: &Manifest) -> Result<Option<RowCheck>, RestoreError> {
    let Some(tables) = &m.tables else { return Ok(None) };
    let session = pg::connect(url).await?;
    let mut check = RowCheck { tables: tables.len(), rows: 0, mismatches: Vec::new() };
    for t in tables {
        check.rows += t.rows;
        let exists = session
            .client()
            .query_opt(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.table],
            )
            .await
            .map_err(|e| session.err("look up a restored table", e))?
            .is_some();
        let restored = if exists {
            let q = format!(
                "SELECT count(*) FROM ONLY {}.{}",
                pg::quote_ident(&t.schema),
                pg::quote_ident(&t.table)
            );
            let row = session
                .client()
                .query_one(&q, &[])
                .await
                .map_err(|e| session.err("count a restored table's rows", e))?;
            Some(row.get::<_, i64>(0) as u64)
        } else {
            None
        };
        if restored != Some(t.rows) {
            check.mismatches.push(RowMismatch {
                schema: t.schema.clone(),
                table: t.table.clone(),
                dumped: t.rows,
                restored,
            });
        }
    }
    Ok(Some(check))
}

impl Restorer {
    pub async fn verify(
        &self,
        m: &Manifest,
        deep: bool,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<VerifyReport, RestoreError> {
        if m.encryption.is_some() && self.keys(m).is_err() {
            return self.verify_sealed(m, progress).await;
        }
        let args: Vec<OsString> = vec!["--list".into()];
        // pg_restore reads archives of its own major and older.
        let tools = match super::archive_major(m) {
            Some(need) => self.tools.for_server(self.own_bin_dir(m), need).await?,
            None => self.tools.clone(),
        };
        let mut proc = tools.spawn("pg_restore", None, &args, Pipes { stdin: true, stdout: true })?;
        let stdin = proc.take_stdin()?;
        let stdout = proc.take_async_stdout().expect("stdout was piped");
        let toc = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut entries = 0u64;
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.is_empty() && !line.starts_with(';') {
                    entries += 1;
                }
            }
            entries
        });
        let streamed =
            match stream_object(&self.storage, m, stdin, SinkMode::MayClose, progress, self.keys(m)?).await {
                Ok(s) => s,
                Err(e) => {
                    proc.kill().await;
                    return Err(e);
                }
            };
        proc.wait().await?;
        let toc_entries = toc.await.unwrap_or(0);
        if streamed.raw_bytes != m.raw_bytes {
            return Err(RestoreError::RawSize {
                id: m.id.clone(),
                expected: m.raw_bytes,
                actual: streamed.raw_bytes,
            });
        }
        let deep = if deep { Some(self.verify_deep(m, cancel).await?) } else { None };
        Ok(VerifyReport {
            id: m.id.clone(),
            database: m.database.clone(),
            sha256: m.sha256.clone(),
            stored_bytes: streamed.stored_bytes,
            raw_bytes: streamed.raw_bytes,
            toc_entries,
            deep,
            note: None,
        })
    }

    /// Without the identity: the stored bytes against the manifest's hash, and no look inside.
    async fn verify_sealed(&self, m: &Manifest, progress: &Progress) -> Result<VerifyReport, RestoreError> {
        use sha2::Digest;
        use tokio::io::AsyncReadExt;
        let mut reader = self.storage.open(&m.object_key()).await?;
        let (mut hasher, mut stored, mut buf) = (sha2::Sha256::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| RestoreError::Read { id: m.id.clone(), message: e.to_string() })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            stored += n as u64;
            progress.add(n as u64);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != m.sha256 || stored != m.stored_bytes {
            return Err(RestoreError::mismatch(m, actual, stored));
        }
        let who = m.encryption.as_ref().map(|e| e.recipients.join(", ")).unwrap_or_default();
        Ok(VerifyReport {
            id: m.id.clone(),
            database: m.database.clone(),
            sha256: actual,
            stored_bytes: stored,
            raw_bytes: 0,
            toc_entries: 0,
            deep: None,
            note: Some(format!("the stored object matches its hash; it is encrypted (to {who}) and no identity is configured, so its contents could not be read")),
        })
    }

    /// Restores into a scratch database this verify creates itself (never one that already
    /// exists) on the scratch server, and drops exactly that one, whatever happens.
    pub(crate) async fn verify_deep(
        &self,
        m: &Manifest,
        cancel: &CancellationToken,
    ) -> Result<DeepReport, RestoreError> {
        let db = self
            .config
            .database(&m.database)
            .ok_or_else(|| RestoreError::UnknownSource { id: m.id.clone(), database: m.database.clone() })?;
        let scratch_cfg = &self.config.scratch;
        Server::check_room(&scratch_cfg.server, scratch_cfg, &m.id, m.raw_bytes)?;
        let major = pg::locate::major_of_version(&m.server_version);
        let server = Server::open_with(
            &scratch_cfg.server,
            scratch_cfg,
            &self.config.daemon.state_dir,
            db,
            &self.config.snapshot.pg_bin_dir,
            Access::Socket,
            major,
        )
        .await?;
        let result = self.deep_on(m, db, &server, cancel).await;
        server.close().await;
        result
    }

    async fn deep_on(
        &self,
        m: &Manifest,
        db: &crate::config::DatabaseConfig,
        server: &Server,
        cancel: &CancellationToken,
    ) -> Result<DeepReport, RestoreError> {
        if !server.is_ephemeral() {
            // What an earlier verify, rehearsal or diagnose left when it was killed; never a live one.
            if let Err(e) = scratch::sweep(server.admin()).await {
                tracing::warn!(error = %e, "could not clear scratch databases left by killed runs");
            }
        }
        // The snapshot's roles, where the source can say which; else owners and grants are left out.
        let mut no_owner = false;
        if server.is_ephemeral() {
            let adopted = match pg::connect(&db.url).await {
                Ok(source) => server.adopt_roles(source.client()).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = adopted {
                tracing::warn!(database = %db.name, error = %e, "the source's roles could not be copied: verify --deep restores without owners and grants");
                no_owner = true;
            }
        }
        let made = scratch::Scratch::create(server.admin(), scratch::Purpose::Verify).await?;
        let (url, scratch) = (made.url.clone(), made.name().to_string());
        let opts = RestoreOptions {
            target: scratch.clone(),
            create: false,
            clean: false,
            jobs: 1,
            no_owner,
            no_subscriptions: true,
        };
        let restored = self.restore_into(m, &url, &opts, &Progress::hidden(), cancel).await;
        let counted = match &restored {
            Ok(_) => {
                let tables = async { pg::connect(&url).await?.user_tables().await.map(|(n, _)| n) }
                    .await
                    .map_err(RestoreError::from);
                match tables {
                    Ok(n) => check_rows(&url, m).await.map(|rows| (n, rows)),
                    Err(e) => Err(e),
                }
            }
            Err(_) => Ok((0, None)),
        };
        if let Err(e) = made.drop().await {
            tracing::error!(database = %scratch, error = %e, "could not drop verify --deep's scratch database");
        }
        let report = restored?;
        let (tables, rows) = counted?;
        Ok(DeepReport {
            scratch_server: server.label().to_string(),
            scratch_database: scratch,
            tables,
            seconds: report.seconds,
            rows,
        })
    }
}
