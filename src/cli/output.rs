//! Human output: sizes, times and the snapshot table. JSON output is serde's, not built here.

use crate::snapshot::Manifest;

pub use crate::units::human_bytes;

pub fn snapshot_line(m: &Manifest) -> String {
    let secs = (m.finished_at - m.taken_at).num_milliseconds() as f64 / 1000.0;
    format!(
        "snapshot {} of {}: {} stored ({} dumped) in {secs:.1}s, sha256 {}",
        m.id,
        m.database,
        human_bytes(m.stored_bytes),
        human_bytes(m.raw_bytes),
        &m.sha256[..12.min(m.sha256.len())]
    )
}

pub fn snapshot_table(list: &[Manifest]) -> String {
    let mut rows = vec![["ID", "DATABASE", "TAKEN AT (UTC)", "REASON", "SCOPE", "STORED", "SHA256"]
        .map(String::from)
        .to_vec()];
    for m in list {
        rows.push(vec![
            m.id.clone(),
            m.database.clone(),
            m.taken_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            m.reason.clone(),
            scope(m),
            human_bytes(m.stored_bytes),
            m.sha256.chars().take(12).collect(),
        ]);
    }
    table(&rows)
}

/// `full`, or the scoped tables (`scoped: public._prisma_migrations`).
fn scope(m: &Manifest) -> String {
    match m.scope.tables() {
        None => "full".into(),
        Some(t) => {
            let names: Vec<String> = t.iter().map(|t| format!("{}.{}", t.schema, t.table)).collect();
            format!("scoped: {}", names.join(", "))
        }
    }
}

pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> =
            r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
