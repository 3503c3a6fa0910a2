//! Cron expressions and when a schedule is due (pure: times in, times out).
//!
//! Five fields, in UTC: minute (0-59), hour (0-23), day of month (1-31),
//! month (1-12 or jan-dec), day of week (0-7 or sun-sat; 0 and 7 are
//! Sunday). Each field is `*`, a value, a range `a-b`, a step `*/n`,
//! `a-b/n` or `a/n`, or a comma list of these. As in Vixie cron, when both
//! day fields are restricted a day matching either one is due.
//!
//! Jitter spreads a schedule's runs over `[0, jitter)` after each
//! occurrence, by a hash of (schedule, occurrence): every server replica
//! computes the same moment. [`due`] decides what a scheduler tick runs:
//!
//! ```text
//!  occurrences after the last one handled, fired (occurrence + jitter) by now:
//!    none                      → nothing
//!    the latest, within grace  → run it; the earlier ones were missed
//!    the latest, later         → skip: all missed | run once: run the latest
//! ```

use std::fmt;

const MAX_TEXT: usize = 256;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// Longest gap between two occurrences: Feb 29 on a given weekday comes
/// round every 28 years.
const SEARCH_DAYS: i64 = 366 * 29;
/// Occurrences walked per [`due`] call; older ones are counted as one
/// missed stretch (a server down for years has nothing useful to replay).
const MAX_WALK: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

/// A parsed expression: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    doms: u64,
    months: u64,
    dows: u64,
    dom_any: bool,
    dow_any: bool,
    text: String,
}

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn number(s: &str, field: usize) -> Result<u32, CronError> {
    let (name, lo, hi) = FIELDS[field];
    let lower = s.to_ascii_lowercase();
    let named = match field {
        3 => MONTHS
            .iter()
            .position(|m| *m == lower)
            .map(|i| i as u32 + 1),
        4 => DAYS.iter().position(|d| *d == lower).map(|i| i as u32),
        _ => None,
    };
    let n = match named {
        Some(n) => n,
        None if !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| CronError(format!("{name}: {s:?}")))?
        }
        None => return Err(CronError(format!("{name}: {s:?} is not a value"))),
    };
    if n < lo || n > hi {
        return Err(CronError(format!("{name}: {n} is outside {lo}-{hi}")));
    }
    Ok(n)
}

fn field_bits(text: &str, field: usize) -> Result<u64, CronError> {
    let (name, lo, hi) = FIELDS[field];
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = match s.parse() {
                    Ok(n) if (1..=hi).contains(&n) && s.len() <= 2 => n,
                    _ => return Err(CronError(format!("{name}: step {s:?} is not 1-{hi}"))),
                };
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, field)?, number(b, field)?)
        } else {
            let a = number(range, field)?;
            // `a/n` runs from a to the end; a lone `a` is just a.
            (a, if part.contains('/') { hi } else { a })
        };
        if a > b {
            return Err(CronError(format!("{name}: range {a}-{b} runs backwards")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        if text.len() > MAX_TEXT {
            return Err(CronError(format!("longer than {MAX_TEXT} bytes")));
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError(format!(
                "five fields (minute hour day-of-month month day-of-week), found {}",
                parts.len()
            )));
        }
        let mut bits = [0u64; 5];
        for (i, p) in parts.iter().enumerate() {
            bits[i] = field_bits(p, i)?;
        }
        // Sunday is 0 and 7.
        if bits[4] & (1 << 7) != 0 {
            bits[4] = (bits[4] | 1) & !(1 << 7);
        }
        let cron = Cron {
            minutes: bits[0],
            hours: bits[1],
            doms: bits[2],
            months: bits[3],
            dows: bits[4],
            dom_any: parts[2].starts_with('*'),
            dow_any: parts[4].starts_with('*'),
            text: parts.join(" "),
        };
        if cron.next_after(0).is_none() {
            return Err(CronError(format!("{:?} never happens", cron.text)));
        }
        Ok(cron)
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, m, d) = civil_from_days(days);
        if self.months & (1 << m) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let dow = (days + 4).rem_euclid(7);
        let dom_ok = self.doms & (1 << d) != 0;
        let dow_ok = self.dows & (1 << dow) != 0;
        match (self.dom_any, self.dow_any) {
            (false, false) => dom_ok || dow_ok,
            _ => dom_ok && dow_ok,
        }
    }

    /// The first minute of this day at or after `from_minute` that matches.
    fn minute_of_day(&self, from_minute: i64) -> Option<i64> {
        (from_minute..1440)
            .find(|m| self.hours & (1 << (m / 60)) != 0 && self.minutes & (1 << (m % 60)) != 0)
    }

    /// The first occurrence strictly after `after_ms` (Unix ms, UTC).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = after_ms.div_euclid(MINUTE_MS) + 1;
        let first_day = start.div_euclid(1440);
        let mut from = start.rem_euclid(1440);
        for day in first_day..first_day + SEARCH_DAYS {
            if self.day_matches(day) {
                if let Some(m) = self.minute_of_day(from) {
                    return Some(day * DAY_MS + m * MINUTE_MS);
                }
            }
            from = 0;
        }
        None
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// (year, month 1-12, day 1-31) of days since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The delay after `occurrence` at which `schedule` fires: the same on
/// every replica (FNV-1a of both), in `[0, jitter_ms)`.
pub fn jitter_ms(schedule: &str, occurrence: i64, jitter_ms: i64) -> i64 {
    if jitter_ms <= 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule.bytes().chain(occurrence.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % jitter_ms as u64) as i64
}

/// What to do with an occurrence found late (the server was down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Record it missed; wait for the next one.
    Skip,
    /// Run the latest one once (however many were missed).
    RunOnce,
}

impl Missed {
    pub fn parse(s: &str) -> Option<Missed> {
        match s {
            "skip" => Some(Missed::Skip),
            "run-once" | "run_once" => Some(Missed::RunOnce),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run-once",
        }
    }
}

/// A scheduler tick's decision for one schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// The occurrence to run now.
    pub run: Option<i64>,
    /// Occurrences not run (oldest first; at most [`MAX_WALK`]).
    pub missed: Vec<i64>,
    /// The newest occurrence dealt with (run or missed): the next tick
    /// starts after it.
    pub handled: Option<i64>,
}

/// Occurrences after `last` whose firing time (occurrence + jitter) has
/// come by `now`; the latest runs if it fired within `grace_ms`, or
/// anyway under [`Missed::RunOnce`].
pub fn due(
    cron: &Cron,
    schedule: &str,
    jitter: i64,
    last: i64,
    now: i64,
    grace_ms: i64,
    policy: Missed,
) -> Due {
    let mut fired = Vec::new();
    // History older than a week is not walked (nor reported missed).
    let mut at = last.max(now - 7 * DAY_MS - jitter.max(0));
    while fired.len() < MAX_WALK {
        let Some(o) = cron.next_after(at) else { break };
        if o > now {
            break;
        }
        if o + jitter_ms(schedule, o, jitter) > now {
            // Not fired yet; later occurrences are not either (jitter <
            // the gap is not promised, so stop at the first unfired one).
            break;
        }
        fired.push(o);
        at = o;
    }
    let Some(&latest) = fired.last() else {
        return Due::default();
    };
    let on_time = now - (latest + jitter_ms(schedule, latest, jitter)) <= grace_ms;
    let run = (on_time || policy == Missed::RunOnce).then_some(latest);
    if run.is_some() {
        fired.pop();
    }
    Due {
        run,
        missed: fired,
        handled: Some(latest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        // days_from_civil, the inverse of civil_from_days.
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * DAY_MS + h * 3_600_000 + mi * MINUTE_MS
    }

    fn next(expr: &str, from: i64) -> i64 {
        Cron::parse(expr).unwrap().next_after(from).unwrap()
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 59, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(at(y, m.into(), d.into(), 0, 0), days * DAY_MS, "{days}");
        }
    }

    #[test]
    fn next_occurrences_follow_the_fields() {
        let t = at(2026, 12, 6, 10, 48);
        assert_eq!(next("0 3 * * *", t), at(2026, 12, 7, 3, 0));
        assert_eq!(next("* * * * *", t), at(2026, 12, 6, 10, 49));
        assert_eq!(next("*/15 * * * *", t), at(2026, 12, 6, 11, 0));
        assert_eq!(next("5-10/5 * * * *", t), at(2026, 12, 6, 11, 5));
        assert_eq!(next("0 0 1 jan *", t), at(2027, 1, 1, 0, 0));
        assert_eq!(next("0 12 * * mon", t), at(2026, 12, 7, 12, 0));
        // 2026-12-06 is a Sunday.
        assert_eq!(next("0 12 * * 7", t), at(2026, 12, 6, 12, 0));
        assert_eq!(next("0 12 * * SUN", t), at(2026, 12, 6, 12, 0));
        assert_eq!(next("0 0 29 2 *", t), at(2028, 2, 29, 0, 0));
        assert_eq!(next("30 9,17 * * 1-5", t), at(2026, 12, 7, 9, 30));
        // Both day fields restricted: either one (the 13th, or a Friday).
        assert_eq!(next("0 0 13 * 5", t), at(2026, 12, 11, 0, 0));
        // An occurrence exactly at `from` is not "after" it.
        assert_eq!(
            next("0 3 * * *", at(2026, 12, 7, 3, 0)),
            at(2026, 12, 8, 3, 0)
        );
        assert_eq!(
            next("0 3 * * *", at(2026, 12, 7, 3, 0) - 1),
            at(2026, 12, 7, 3, 0)
        );
        assert_eq!(
            next("59 23 31 12 *", at(2026, 12, 31, 23, 59)),
            at(2027, 12, 31, 23, 59)
        );
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (e, says) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "minute: 60 is outside"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * foo *", "month: \"foo\""),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step"),
            ("10-5 * * * *", "backwards"),
            ("0 0 30 2 *", "never happens"),
            ("1,,2 * * * *", "minute"),
            ("-1 * * * *", "minute"),
        ] {
            let err = Cron::parse(e).unwrap_err().to_string();
            assert!(err.contains(says), "{e}: {err}");
        }
        assert!(Cron::parse(&"1,".repeat(200)).is_err());
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let a = jitter_ms("backup", 1_000, 600_000);
        assert_eq!(a, jitter_ms("backup", 1_000, 600_000));
        assert!((0..600_000).contains(&a));
        assert_ne!(a, jitter_ms("backup", 61_000, 600_000));
        assert_eq!(jitter_ms("backup", 1_000, 0), 0);
    }

    #[test]
    fn due_runs_the_latest_on_time_and_follows_the_policy_when_late() {
        let c = Cron::parse("0 * * * *").unwrap();
        let h = |n: i64| at(2026, 12, 6, n, 0);
        // Nothing since the last one.
        assert_eq!(
            due(
                &c,
                "s",
                0,
                h(3),
                h(3) + 59 * MINUTE_MS,
                60_000,
                Missed::Skip
            ),
            Due::default()
        );
        // On time.
        let d = due(&c, "s", 0, h(3), h(4) + 10_000, 60_000, Missed::Skip);
        assert_eq!(
            (d.run, d.missed.len(), d.handled),
            (Some(h(4)), 0, Some(h(4)))
        );
        // Down from 3:30 to 6:10: 4 and 5 missed; 6 late.
        let now = h(6) + 10 * MINUTE_MS;
        let skip = due(&c, "s", 0, h(3), now, 60_000, Missed::Skip);
        assert_eq!(
            (skip.run, skip.missed, skip.handled),
            (None, vec![h(4), h(5), h(6)], Some(h(6)))
        );
        let once = due(&c, "s", 0, h(3), now, 60_000, Missed::RunOnce);
        assert_eq!((once.run, once.missed), (Some(h(6)), vec![h(4), h(5)]));
        // With jitter, an occurrence waits for its own delay.
        let j = jitter_ms("s", h(4), 30 * MINUTE_MS);
        let early = due(
            &c,
            "s",
            30 * MINUTE_MS,
            h(3),
            h(4) + j - 1,
            60_000,
            Missed::Skip,
        );
        assert_eq!(early.run, None);
        let fired = due(
            &c,
            "s",
            30 * MINUTE_MS,
            h(3),
            h(4) + j,
            60_000,
            Missed::Skip,
        );
        assert_eq!(fired.run, Some(h(4)));
    }
}
