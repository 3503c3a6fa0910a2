//! The wave planner: which runners of a rollout start when, and when the
//! rollout stops (pure: events in, decisions out; `fleet/rollout.rs`
//! drives it with real jobs).
//!
//! Targets are split into waves (a size, or a percentage of all targets,
//! at least one runner each). A wave starts once the previous one is
//! over; inside it at most `concurrency` runners run at once. Failures
//! are counted since the last start or resume: reaching the threshold
//! (a count, or a rate of the runners finished since then) halts the
//! rollout — nothing new starts, what runs finishes, the rest waits.
//!
//! ```text
//!            ┌──── wave over, more waves ────┐
//!            ▼                               │
//!  ──▶ running ──────────────────────────────┘──── all waves over ──▶ done
//!       │  ▲  │ failures reach the threshold
//!       │  │  └──────────────▶ halted ──resume──▶ running (failures counted afresh)
//!  pause│  │resume               │
//!       ▼  │                     │
//!      paused ───────abort───────┴──abort──▶ aborted (waiting runners skipped,
//!                                                     running ones asked to cancel;
//!                                                     an update taken back in time:
//!                                                     skipped, Planner::withdrawn)
//! ```
//!
//! `halted`, `paused` and `aborted` are reached at once; runners already
//! started keep reporting and are counted (a rollout is over when nothing
//! runs: [`Planner::is_over`]).
//!
//! A soak time (update rollouts) holds the next wave back for that long
//! after a wave is over; a runner of the soaking wave that goes bad in
//! the meantime ([`Planner::failed_late`]) counts as a failure of it and
//! may halt the rollout before the next wave starts.

use serde::{Deserialize, Serialize};

/// How big each wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Count(u32),
    /// Percent of all targets, 1-100, rounded up.
    Percent(u8),
}

impl WaveSize {
    /// `10` or `10%`.
    pub fn parse(s: &str) -> Option<WaveSize> {
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(n @ 1..=100) => Some(WaveSize::Percent(n)),
                _ => None,
            },
            None => match s.parse::<u32>() {
                Ok(n @ 1..) => Some(WaveSize::Count(n)),
                _ => None,
            },
        }
    }

    fn of(self, total: usize) -> usize {
        match self {
            WaveSize::Count(n) => n as usize,
            WaveSize::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

/// When failures halt the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Threshold {
    /// Halt once this many runners failed (at least 1).
    Count(u32),
    /// Halt when, at the end of a wave, more than this percent of the
    /// runners finished (since the start or resume) failed.
    Rate(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    Halted,
    Aborted,
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Halted => "halted",
            State::Aborted => "aborted",
            State::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Waiting,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// Counts over all targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub targets: usize,
    pub waiting: usize,
    pub running: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Serialisable whole: a rollout's driver keeps it in the store at every
/// change (`rollout.rs`), and whoever drives it next goes on from there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Planner {
    targets: Vec<TargetState>,
    /// Index of the first target of each wave, and the end.
    bounds: Vec<usize>,
    wave: usize,
    concurrency: usize,
    threshold: Threshold,
    state: State,
    /// Since the last start or resume.
    failed_since: usize,
    finished_since: usize,
    /// How long the next wave waits after a wave is over.
    soak_ms: i64,
    /// While the finished current wave soaks: when the next may start.
    soak_until: Option<i64>,
}

impl Planner {
    pub fn new(targets: usize, size: WaveSize, concurrency: u32, threshold: Threshold) -> Planner {
        let step = size.of(targets);
        let mut bounds: Vec<usize> = (0..targets).step_by(step).collect();
        bounds.push(targets);
        Planner {
            targets: vec![TargetState::Waiting; targets],
            bounds,
            wave: 0,
            concurrency: (concurrency as usize).max(1),
            threshold,
            state: if targets == 0 {
                State::Done
            } else {
                State::Running
            },
            failed_since: 0,
            finished_since: 0,
            soak_ms: 0,
            soak_until: None,
        }
    }

    /// Whether a planner read back from the store holds together (waves
    /// that cover its targets in order, the current one among them): one
    /// that does not is not driven (it would index out of bounds).
    pub fn is_sound(&self) -> bool {
        let n = self.targets.len();
        self.bounds.first() == Some(&0)
            && self.bounds.last() == Some(&n)
            && self.bounds.windows(2).all(|w| w[0] < w[1])
            && (self.wave + 1 < self.bounds.len() || (n == 0 && self.wave == 0))
    }

    /// Hold each next wave back `ms` after a wave is over.
    pub fn with_soak(mut self, ms: i64) -> Planner {
        self.soak_ms = ms.max(0);
        self
    }

    pub fn soak_ms(&self) -> i64 {
        self.soak_ms
    }

    /// When the soaking wave's next may start, while one soaks.
    pub fn soak_until(&self) -> Option<i64> {
        self.soak_until
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The current wave (0-based) and how many there are.
    pub fn wave(&self) -> (usize, usize) {
        (self.wave, self.bounds.len() - 1)
    }

    pub fn wave_of(&self, target: usize) -> usize {
        self.bounds.partition_point(|&b| b <= target) - 1
    }

    pub fn target(&self, i: usize) -> TargetState {
        self.targets[i]
    }

    fn count(&self, s: TargetState) -> usize {
        self.targets.iter().filter(|&&t| t == s).count()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            targets: self.targets.len(),
            waiting: self.count(TargetState::Waiting),
            running: self.count(TargetState::Running),
            succeeded: self.count(TargetState::Succeeded),
            failed: self.count(TargetState::Failed),
            skipped: self.count(TargetState::Skipped),
        }
    }

    /// Nothing runs and nothing more will start without an operator.
    pub fn is_over(&self) -> bool {
        self.state != State::Running && self.count(TargetState::Running) == 0
    }

    /// Targets to start now (marked running). Advances to the next wave
    /// when the current one is over (no soak time).
    pub fn starts(&mut self) -> Vec<usize> {
        self.starts_at(0)
    }

    /// [`Planner::starts`] at `now` (ms): a wave that is over soaks for
    /// the soak time before the next starts.
    pub fn starts_at(&mut self, now: i64) -> Vec<usize> {
        if self.state != State::Running {
            return Vec::new();
        }
        let mut wave = self.bounds[self.wave]..self.bounds[self.wave + 1];
        let busy = |p: &Planner, r: &std::ops::Range<usize>| {
            p.targets[r.clone()]
                .iter()
                .any(|&t| t == TargetState::Waiting || t == TargetState::Running)
        };
        while !busy(self, &wave) {
            // Every wave soaks, the last one too: a late failure of it
            // still halts (and the rollout is not done before).
            if self.soak_ms > 0 {
                match self.soak_until {
                    None => {
                        self.soak_until = Some(now.saturating_add(self.soak_ms));
                        return Vec::new();
                    }
                    Some(until) if now < until => return Vec::new(),
                    Some(_) => self.soak_until = None,
                }
            }
            if self.wave + 2 == self.bounds.len() {
                self.state = State::Done;
                return Vec::new();
            }
            self.wave += 1;
            wave = self.bounds[self.wave]..self.bounds[self.wave + 1];
        }
        let running = self.targets[wave.clone()]
            .iter()
            .filter(|&&t| t == TargetState::Running)
            .count();
        let room = self.concurrency.saturating_sub(running);
        let start: Vec<usize> = wave
            .filter(|&i| self.targets[i] == TargetState::Waiting)
            .take(room)
            .collect();
        for &i in &start {
            self.targets[i] = TargetState::Running;
        }
        start
    }

    /// A started target is over. Ignored unless it was running (a
    /// repeated report changes nothing).
    pub fn finished(&mut self, target: usize, ok: bool) {
        if self.targets.get(target) != Some(&TargetState::Running) {
            return;
        }
        self.targets[target] = if ok {
            TargetState::Succeeded
        } else {
            TargetState::Failed
        };
        self.finished_since += 1;
        if !ok {
            self.failed_since += 1;
        }
        let over = match self.threshold {
            Threshold::Count(n) => self.failed_since >= (n as usize).max(1),
            // A rate is judged when the wave is over: one early failure
            // is 100% of one runner.
            Threshold::Rate(p) => {
                let w = self.wave_of(target);
                let wave = self.bounds[w]..self.bounds[w + 1];
                let open = self.targets[wave]
                    .iter()
                    .any(|&t| t == TargetState::Waiting || t == TargetState::Running);
                !open && self.failed_since * 100 > p as usize * self.finished_since
            }
        };
        if over && self.state == State::Running {
            self.state = State::Halted;
        }
    }

    /// A target that succeeded went bad afterwards (an update rolled back
    /// while its wave soaked): a failure, judged like one at its end.
    pub fn failed_late(&mut self, target: usize) {
        if self.targets.get(target) != Some(&TargetState::Succeeded) {
            return;
        }
        self.targets[target] = TargetState::Failed;
        self.failed_since += 1;
        let over = match self.threshold {
            Threshold::Count(n) => self.failed_since >= (n as usize).max(1),
            Threshold::Rate(p) => self.failed_since * 100 > p as usize * self.finished_since,
        };
        if over && self.state == State::Running {
            self.state = State::Halted;
        }
    }

    pub fn pause(&mut self) -> bool {
        self.to(State::Running, State::Paused)
    }

    /// From paused or halted: go on with the waiting targets.
    pub fn resume(&mut self) -> bool {
        if matches!(self.state, State::Paused | State::Halted) {
            self.state = State::Running;
            self.failed_since = 0;
            self.finished_since = 0;
            true
        } else {
            false
        }
    }

    /// Skip every waiting target; returns the running ones (to cancel).
    pub fn abort(&mut self) -> Option<Vec<usize>> {
        if matches!(self.state, State::Done | State::Aborted) {
            return None;
        }
        self.state = State::Aborted;
        let mut running = Vec::new();
        for (i, t) in self.targets.iter_mut().enumerate() {
            match t {
                TargetState::Waiting => *t = TargetState::Skipped,
                TargetState::Running => running.push(i),
                _ => {}
            }
        }
        Some(running)
    }

    /// After an abort: a running target that will not finish (an update
    /// taken back before the runner took it) is skipped. Ignored unless
    /// the rollout is aborted and the target runs.
    pub fn withdrawn(&mut self, target: usize) {
        if self.state == State::Aborted && self.targets.get(target) == Some(&TargetState::Running) {
            self.targets[target] = TargetState::Skipped;
        }
    }

    fn to(&mut self, from: State, to: State) -> bool {
        if self.state == from {
            self.state = to;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_wave(p: &mut Planner, fail: &[usize]) -> Vec<usize> {
        let s = p.starts();
        for &i in &s {
            p.finished(i, !fail.contains(&i));
        }
        s
    }

    #[test]
    fn waves_by_size_and_percent() {
        assert_eq!(
            Planner::new(10, WaveSize::Count(4), 100, Threshold::Count(1)).bounds,
            [0, 4, 8, 10]
        );
        assert_eq!(
            Planner::new(10, WaveSize::Percent(25), 100, Threshold::Count(1)).bounds,
            [0, 3, 6, 9, 10]
        );
        assert_eq!(
            Planner::new(3, WaveSize::Percent(1), 100, Threshold::Count(1)).bounds,
            [0, 1, 2, 3]
        );
        assert_eq!(
            Planner::new(0, WaveSize::Count(4), 1, Threshold::Count(1)).state(),
            State::Done
        );
        assert_eq!(WaveSize::parse("10%"), Some(WaveSize::Percent(10)));
        assert_eq!(WaveSize::parse("3"), Some(WaveSize::Count(3)));
        for bad in ["0", "0%", "101%", "x", "-1", ""] {
            assert_eq!(WaveSize::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_failure_halts_after_its_wave_and_resume_runs_the_rest() {
        // 6 runners, waves of 2, the third (index 2) fails.
        let mut p = Planner::new(6, WaveSize::Count(2), 2, Threshold::Count(1));
        assert_eq!(run_wave(&mut p, &[2]), [0, 1]);
        assert_eq!(run_wave(&mut p, &[2]), [2, 3]);
        assert_eq!(p.state(), State::Halted);
        assert!(p.is_over());
        assert!(p.starts().is_empty());
        let t = p.totals();
        assert_eq!((t.succeeded, t.failed, t.waiting), (3, 1, 2));
        assert!(p.resume());
        assert_eq!(run_wave(&mut p, &[]), [4, 5]);
        assert!(p.starts().is_empty());
        assert_eq!(p.state(), State::Done);
        assert_eq!(p.totals().succeeded, 5);
    }

    #[test]
    fn concurrency_limits_a_wave_and_running_targets_finish_after_a_halt() {
        let mut p = Planner::new(5, WaveSize::Count(5), 2, Threshold::Count(1));
        assert_eq!(p.starts(), [0, 1]);
        assert!(p.starts().is_empty(), "two already run");
        p.finished(0, false);
        assert_eq!(p.state(), State::Halted);
        assert!(!p.is_over(), "1 still runs");
        assert!(p.starts().is_empty());
        p.finished(1, true);
        p.finished(1, false); // a repeat changes nothing
        assert!(p.is_over());
        assert_eq!(p.totals().succeeded, 1);
    }

    #[test]
    fn a_rate_threshold_counts_finished_runners_since_resume() {
        let mut p = Planner::new(10, WaveSize::Count(5), 5, Threshold::Rate(20));
        run_wave(&mut p, &[0]); // 1 of 5 = 20%: not over 20
        assert_eq!(p.state(), State::Running);
        run_wave(&mut p, &[5, 6]); // 3 of 10
        assert_eq!(p.state(), State::Halted);
    }

    #[test]
    fn a_soak_holds_the_next_wave_and_a_late_failure_halts_before_it() {
        let mut p = Planner::new(4, WaveSize::Count(2), 2, Threshold::Count(1)).with_soak(1000);
        assert_eq!(p.starts_at(0), [0, 1]);
        p.finished(0, true);
        p.finished(1, true);
        assert!(p.starts_at(10).is_empty(), "soaking");
        assert_eq!(p.soak_until(), Some(1010));
        assert!(p.starts_at(1009).is_empty());
        assert_eq!(p.starts_at(1010), [2, 3]);
        assert_eq!(p.soak_until(), None);
        p.finished(2, true);
        p.finished(3, true);
        assert!(p.starts_at(2000).is_empty());
        assert_eq!(p.state(), State::Running, "the last wave soaks too");
        assert!(!p.is_over());
        assert!(p.starts_at(3000).is_empty());
        assert_eq!(p.state(), State::Done);

        let mut p = Planner::new(4, WaveSize::Count(2), 2, Threshold::Count(1)).with_soak(1000);
        run_wave(&mut p, &[]);
        assert!(p.starts_at(0).is_empty());
        p.failed_late(1);
        p.failed_late(2); // never ran: nothing
        assert_eq!(p.state(), State::Halted);
        assert!(p.starts_at(5000).is_empty());
        let t = p.totals();
        assert_eq!((t.succeeded, t.failed, t.waiting), (1, 1, 2));
        assert!(p.resume());
        assert_eq!(p.starts_at(5000), [2, 3]);
    }

    #[test]
    fn a_planner_survives_the_store_and_goes_on_where_it_was() {
        let mut p = Planner::new(6, WaveSize::Count(2), 1, Threshold::Count(2)).with_soak(500);
        assert_eq!(p.starts_at(0), [0]);
        p.finished(0, false);
        assert_eq!(p.starts_at(1), [1]);
        assert!(p.pause());
        let json = serde_json::to_string(&p).unwrap();
        let mut q: Planner = serde_json::from_str(&json).unwrap();
        assert!(q.is_sound());
        assert_eq!(q.state(), State::Paused);
        assert_eq!(q.target(1), TargetState::Running);
        assert!(q.starts_at(2).is_empty(), "paused");
        q.finished(1, true);
        assert!(q.resume());
        // Wave 1 is over: it soaks from now, then wave 2 starts.
        assert!(q.starts_at(10).is_empty());
        assert_eq!(q.soak_until(), Some(510));
        let mut r: Planner = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert!(r.starts_at(509).is_empty(), "the soak is kept");
        assert_eq!(r.starts_at(510), [2]);
        // The failure before the pause was counted afresh at resume.
        r.finished(2, false);
        assert_eq!(r.state(), State::Running);
        let t = r.totals();
        assert_eq!((t.succeeded, t.failed, t.waiting), (1, 2, 3));
        assert!(Planner::new(0, WaveSize::Count(1), 1, Threshold::Count(1)).is_sound());
    }

    #[test]
    fn a_planner_that_does_not_hold_together_is_refused() {
        let p = Planner::new(4, WaveSize::Count(2), 1, Threshold::Count(1));
        let mut v = serde_json::to_value(&p).unwrap();
        v["bounds"] = serde_json::json!([0, 2, 9]);
        assert!(!serde_json::from_value::<Planner>(v.clone())
            .unwrap()
            .is_sound());
        v["bounds"] = serde_json::json!([0, 2, 4]);
        v["wave"] = serde_json::json!(2);
        assert!(!serde_json::from_value::<Planner>(v.clone())
            .unwrap()
            .is_sound());
        v["wave"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Planner>(v).unwrap().is_sound());
    }

    #[test]
    fn pause_resume_and_abort() {
        let mut p = Planner::new(4, WaveSize::Count(1), 1, Threshold::Count(1));
        assert_eq!(p.starts(), [0]);
        assert!(p.pause());
        p.finished(0, true);
        assert!(p.starts().is_empty() && p.is_over());
        assert!(!p.pause());
        assert!(p.resume());
        assert_eq!(p.starts(), [1]);
        assert_eq!(p.abort(), Some(vec![1]));
        assert_eq!(p.abort(), None);
        assert!(!p.resume());
        p.finished(1, false);
        let t = p.totals();
        assert_eq!((t.succeeded, t.failed, t.skipped, t.running), (1, 1, 2, 0));
        assert_eq!(p.state(), State::Aborted);
        assert_eq!(p.wave_of(3), 3);
    }

    #[test]
    fn an_aborted_rollout_skips_the_running_targets_it_withdraws() {
        let mut p = Planner::new(3, WaveSize::Count(3), 3, Threshold::Count(1));
        assert_eq!(p.starts(), [0, 1, 2]);
        p.withdrawn(0); // not aborted: nothing
        assert_eq!(p.target(0), TargetState::Running);
        assert_eq!(p.abort(), Some(vec![0, 1, 2]));
        p.withdrawn(0);
        p.finished(1, true);
        p.withdrawn(1); // finished already: stays
        assert!(!p.is_over(), "2 still runs");
        p.withdrawn(2);
        assert!(p.is_over());
        let t = p.totals();
        assert_eq!((t.succeeded, t.skipped, t.running), (1, 2, 0));
    }
}
