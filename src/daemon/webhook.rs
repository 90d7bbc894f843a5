//! `[[notify]] webhook`: a JSON POST per event, sent from its own task (on the daemon's tracker,
//! so shutdown lets it go out) with a timeout and a few retries, so a slow or dead receiver
//! never holds up a snapshot. URLs carry tokens, so logs name only the host.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::task::TaskTracker;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Notifier {
    urls: Arc<Vec<String>>,
    client: reqwest::Client,
    tasks: TaskTracker,
}

impl Notifier {
    pub fn new(urls: Vec<String>, tasks: TaskTracker) -> Notifier {
        let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap_or_default();
        Notifier { urls: Arc::new(urls), client, tasks }
    }

    /// Fires `event` about `database` at every webhook; returns at once.
    pub fn send(&self, event: &str, database: &str, detail: Value) {
        if self.urls.is_empty() {
            return;
        }
        let body = json!({
            "event": event,
            "database": database,
            "host": crate::snapshot::hostname(),
            "at": chrono::Utc::now(),
            "detail": detail,
        });
        for url in self.urls.iter().cloned() {
            let (client, body) = (self.client.clone(), body.clone());
            self.tasks.spawn(async move { post(client, url, body).await });
        }
    }
}

async fn post(client: reqwest::Client, url: String, body: Value) {
    let host =
        reqwest::Url::parse(&url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    for attempt in 1..=ATTEMPTS {
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(webhook = %host, status = %r.status(), attempt, "webhook refused the event")
            }
            // reqwest's error text includes the URL, and with it the token: say only what kind.
            Err(e) => {
                tracing::warn!(webhook = %host, timeout = e.is_timeout(), connect = e.is_connect(), attempt, "webhook unreachable")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
    tracing::error!(webhook = %host, event = %body["event"], "gave up sending the event");
}
