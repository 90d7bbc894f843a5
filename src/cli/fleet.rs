//! `pgmedic fleet`: every installation sharing the configured storage, from the heartbeats
//! their daemons write (see `fleet`), as a table or one JSON document. Reads the storage
//! only: it works with no daemon running here.

use chrono::Utc;
use serde_json::json;

use super::context::open_storage;
use super::output::table;
use crate::config::Config;
use crate::fleet::{self, Host};

pub async fn fleet(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let storage = open_storage(cfg).await?;
    let now = Utc::now();
    let hosts = fleet::read(&storage, now).await?;
    if json {
        let doc = json!({ "storage": storage.location(), "checked_at": now, "hosts": hosts });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if hosts.is_empty() {
        println!("no heartbeat in {}: no daemon writes to this storage yet", storage.location());
    } else {
        print!("{}", text(&hosts));
    }
    Ok(())
}

fn text(hosts: &[Host]) -> String {
    let mut rows = vec![[
        "INSTANCE",
        "STATE",
        "HOST",
        "LAST HEARTBEAT (UTC)",
        "VERSION",
        "DATABASES",
        "NEEDS ATTENTION",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    for h in hosts {
        let b = h.heartbeat.as_ref();
        let trouble = b.map(fleet::trouble).unwrap_or_default();
        rows.push(vec![
            h.instance.clone(),
            h.state.to_string(),
            b.map(|b| b.host.clone()).unwrap_or_default(),
            b.map(|b| b.written_at.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
            b.map(|b| b.version.clone()).unwrap_or_default(),
            b.map(|b| b.databases.len().to_string()).unwrap_or_default(),
            if trouble.is_empty() { "-".into() } else { trouble.join("; ") },
        ]);
        if let Some(why) = &h.why {
            notes.push(format!("{}: {why}", h.instance));
        }
    }
    let mut out = table(&rows);
    for n in notes {
        out.push_str(&format!("\n{n}"));
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}
