//! Cron schedules: 6 fields with seconds, UTC, parsed exactly as the scheduler parses them, so
//! a schedule that passes `check-config` is one the daemon can run.

use std::fmt;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        if text.split_whitespace().count() != 6 {
            return Err(format!("`{text}` is not a 6-field cron (sec min hour day month weekday)"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map_err(|e| format!("`{text}` is not a valid cron schedule: {e}"))?;
        Ok(Schedule { text: text.to_string(), cron })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The run nearest to `t`: the slot a firing at `t` belongs to (a timer may fire a little
    /// early or late), the same on every host with this schedule.
    pub fn slot_of(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Whole seconds: the cron's finest unit (croner would keep the fraction otherwise).
        let whole = chrono::SubsecRound::trunc_subsecs(t, 0);
        let before = self.cron.find_previous_occurrence(&whole, true).ok();
        let after = self.next_after(whole);
        match (before, after) {
            (Some(b), Some(a)) => Some(if t - b <= a - t { b } else { a }),
            (b, a) => b.or(a),
        }
    }

    /// The gap between the next two runs after `t`: how old the newest snapshot may be before a
    /// run counts as missed.
    pub fn period_after(&self, t: DateTime<Utc>) -> Option<chrono::Duration> {
        let first = self.next_after(t)?;
        Some(self.next_after(first)? - first)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_belongs_to_the_nearest_run() {
        let s = Schedule::parse("0 0 * * * *").unwrap();
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(s.slot_of(at("2026-01-01T03:00:00.004Z")), Some(at("2026-01-01T03:00:00Z")));
        assert_eq!(s.slot_of(at("2026-01-01T02:59:59.990Z")), Some(at("2026-01-01T03:00:00Z")));
        assert_eq!(s.slot_of(at("2026-01-01T03:00:00Z")), Some(at("2026-01-01T03:00:00Z")));
    }

    #[test]
    fn daily_at_three() {
        let s = Schedule::parse("0 0 3 * * *").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-21T05:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(s.next_after(t).unwrap().to_rfc3339(), "2026-11-22T03:00:00+00:00");
        assert_eq!(s.period_after(t).unwrap(), chrono::Duration::days(1));
        assert!(Schedule::parse("0 3 * * *").is_err());
        assert!(Schedule::parse("0 0 25 * * *").is_err());
    }
}
