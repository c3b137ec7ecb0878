//! The run state machine, without processes: what one run does on each thing that can
//! happen to it (a runner frame, an interrupt, the deadline, the interpreter's end, a
//! caller collecting), and what the kernel must do in turn ([`Reaction`]). The kernel
//! (`run.rs`) holds it under its state lock and carries out the reactions.
//!
//! # Interrupts
//! An interrupt reaches the run's code only once the runner has started the step: the
//! runner sends `start <seq>` just before it runs user code, with its interrupt handler in
//! place. An interrupt asked for before that (the runner has not read the step yet, as on a
//! busy machine) is held and delivered when `start` comes; a SIGINT sent earlier would land
//! in the runner's idle loop and be lost.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::runtime::console::{Console, RunStatus, Stream};
use crate::runtime::{ExecMode, RunResult};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Code is running.
    Running,
    /// The code waits for an input line.
    WaitingInput { is_password: bool },
    /// The run ended with this status (finished or exec-timeout).
    Done(RunStatus),
}

/// The run in flight (or ended but not yet fully returned).
#[derive(Debug)]
pub(super) struct RunState {
    /// The caller's run id.
    pub run_id: String,
    /// Output not yet returned.
    console: Console,
    /// Where the run stands.
    pub phase: Phase,
    /// Sequence number of the step (exec, build or exec command) the runner works on.
    pub step_seq: u64,
    /// The runner sent `start` for `step_seq`: its code runs.
    started: bool,
    /// An interrupt was asked for before the step started.
    interrupt_pending: bool,
    /// Batch: the exec command to run once the build step succeeded.
    pub next_exec: Option<String>,
    /// Batch: the build step ended and `build-finished` was not returned yet; holds the
    /// build's output (the exec step's output goes to the next answer).
    build_output: Option<Vec<Value>>,
    /// When the run times out.
    pub deadline: Instant,
    /// The exit code of the last step that ended (batch commands; 0 for code that ran).
    exit_code: Option<i64>,
    /// The interpreter generation the run lives in.
    pub generation: u64,
}

/// What the kernel must do after the machine handled an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reaction {
    /// The run's phase or output changed in a way callers wait for: wake them.
    pub changed: bool,
    /// Start this shell step (a batch's exec step) with this sequence number.
    pub next_step: Option<(u64, String)>,
    /// Send SIGINT to the kernel's processes now.
    pub interrupt: bool,
}

impl Reaction {
    fn changed() -> Self {
        Self { changed: true, ..Self::default() }
    }
}

impl RunState {
    /// A run of step `seq`, with an output cap of `cap` bytes.
    pub fn new(run_id: String, cap: u64, deadline: Instant, generation: u64, seq: u64) -> Self {
        Self {
            run_id,
            console: Console::new(cap),
            phase: Phase::Running,
            step_seq: seq,
            started: false,
            interrupt_pending: false,
            next_exec: None,
            build_output: None,
            deadline,
            exit_code: None,
            generation,
        }
    }

    /// The run has not ended.
    pub fn is_live(&self) -> bool {
        !matches!(self.phase, Phase::Done(_))
    }

    /// Ends the run at once (nothing to run: a batch without steps).
    pub fn finish_empty(&mut self) {
        self.phase = Phase::Done(RunStatus::Finished);
    }

    /// A caller resumes the run with `code`: the input line to send to the runner when the
    /// run waits for one and the caller answers it (mode `continue` only fetches output).
    pub fn resume(&mut self, mode: ExecMode, code: &str) -> Option<String> {
        match self.phase {
            Phase::WaitingInput { .. } if mode != ExecMode::Continue => {
                self.phase = Phase::Running;
                Some(code.to_owned())
            }
            _ => None,
        }
    }

    /// Raw output of the interpreter's stdout or stderr.
    pub fn output(&mut self, stream: Stream, bytes: &[u8]) {
        if self.is_live() {
            self.console.push_bytes(stream, bytes);
        }
    }

    /// A frame from the runner. `next_seq` numbers a batch's next step.
    pub fn frame(&mut self, kind: &str, payload: &str, next_seq: &mut u64) -> Reaction {
        if !self.is_live() {
            return Reaction::default();
        }
        match kind {
            "start" => {
                if payload.trim().parse::<u64>().ok() != Some(self.step_seq) {
                    return Reaction::default();
                }
                self.started = true;
                let interrupt = std::mem::take(&mut self.interrupt_pending);
                Reaction { interrupt, ..Reaction::default() }
            }
            "done" => self.step_done(payload, next_seq),
            "input" => {
                self.phase = Phase::WaitingInput { is_password: payload == "1" };
                Reaction::changed()
            }
            "media" => {
                let (mime, data) = payload.split_once('\n').unwrap_or((payload, ""));
                self.console.push_media(mime.to_owned(), data.to_owned());
                Reaction::default()
            }
            "out1" | "out2" => {
                let stream = if kind == "out2" { Stream::Stderr } else { Stream::Stdout };
                self.console.push_text(stream, payload.to_owned());
                Reaction::default()
            }
            "html" => {
                self.console.push_other("html", payload.to_owned());
                Reaction::default()
            }
            _ => Reaction::default(),
        }
    }

    fn step_done(&mut self, payload: &str, next_seq: &mut u64) -> Reaction {
        let mut fields = payload.split(' ');
        if fields.next().and_then(|f| f.parse::<u64>().ok()) != Some(self.step_seq) {
            return Reaction::default();
        }
        let rc = fields.next().and_then(|f| f.trim().parse::<i64>().ok()).unwrap_or(0);
        self.exit_code = Some(rc);
        self.started = false;
        self.interrupt_pending = false;
        self.console.flush();
        match self.next_exec.take() {
            Some(exec) if rc == 0 => {
                self.build_output = Some(self.console.take());
                self.step_seq = *next_seq;
                *next_seq += 1;
                Reaction { changed: true, next_step: Some((self.step_seq, exec)), interrupt: false }
            }
            Some(_) => {
                self.console.note(&format!("\n[backend.ai: the build step failed with exit code {rc}]\n"));
                self.phase = Phase::Done(RunStatus::Finished);
                Reaction::changed()
            }
            None => {
                self.phase = Phase::Done(RunStatus::Finished);
                Reaction::changed()
            }
        }
    }

    /// A caller asks to interrupt the run: whether to send SIGINT now (the step's code
    /// runs); otherwise it is held until the runner starts the step.
    pub fn interrupt(&mut self) -> bool {
        if !self.is_live() {
            return false;
        }
        if self.started {
            return true;
        }
        self.interrupt_pending = true;
        false
    }

    /// Whether the deadline passed at `now`; the run then ends as `exec-timeout`.
    pub fn time_out(&mut self, now: Instant) -> bool {
        if !self.is_live() || now < self.deadline {
            return false;
        }
        self.end(RunStatus::ExecTimeout, "\n[backend.ai: the run exceeded its time limit; the kernel was restarted]\n");
        true
    }

    /// The interpreter went away (killed on purpose, or it died): the run ends with `note`.
    pub fn end(&mut self, status: RunStatus, note: &str) {
        if self.is_live() {
            self.console.flush();
            self.console.note(note);
            self.phase = Phase::Done(status);
        }
    }

    /// What a caller waiting until `window_end` gets at `now`, if the run has something
    /// to say: its end, an input request, a build end, or the output so far once the
    /// window closed. `Some((answer, done))`: when done the run is over and must be
    /// dropped.
    pub fn answer(&mut self, now: Instant, window_end: Instant) -> Option<(RunResult, bool)> {
        if let Some(console) = self.build_output.take() {
            return Some((result(RunStatus::BuildFinished, console, None), false));
        }
        let status = match self.phase {
            Phase::Done(status) => status,
            Phase::WaitingInput { .. } => RunStatus::WaitingInput,
            Phase::Running if now >= window_end => RunStatus::Continued,
            Phase::Running => return None,
        };
        let options = match self.phase {
            Phase::WaitingInput { is_password } => Some(json!({ "is_password": is_password })),
            _ => None,
        };
        let done = !self.is_live();
        if done {
            self.console.flush();
        }
        let console = self.console.take();
        let exit_code = if done { self.exit_code } else { None };
        Some((RunResult { exit_code, ..result(status, console, options) }, done))
    }
}

/// A run result without files or completions.
pub(super) fn result(status: RunStatus, console: Vec<Value>, options: Option<Value>) -> RunResult {
    RunResult { status, console, completions: None, options, files: Vec::new(), exit_code: None }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(seq: u64) -> RunState {
        RunState::new("r".to_owned(), 1 << 20, Instant::now() + Duration::from_secs(60), 1, seq)
    }

    fn answer_now(run: &mut RunState) -> Option<(RunResult, bool)> {
        let now = Instant::now();
        run.answer(now, now + Duration::from_secs(1))
    }

    fn text(result: &RunResult, stream: &str) -> String {
        result
            .console
            .iter()
            .filter(|item| item[0] == stream)
            .map(|item| item[1].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn an_interrupt_before_the_step_starts_waits_for_start() {
        let mut r = run(3);
        let mut next = 4;
        assert!(!r.interrupt(), "the runner has not started the step: no signal yet");
        assert_eq!(r.frame("start", "2", &mut next), Reaction::default(), "another step's start");
        assert_eq!(r.frame("start", "3", &mut next), Reaction { interrupt: true, ..Reaction::default() });
        assert!(r.interrupt(), "started: a second interrupt signals at once");
        assert_eq!(r.frame("done", "3 1", &mut next), Reaction::changed());
        assert!(!r.interrupt(), "an ended run is not interrupted");
    }

    #[test]
    fn an_interrupt_after_start_signals_at_once_and_is_not_replayed() {
        let mut r = run(1);
        let mut next = 2;
        assert_eq!(r.frame("start", "1", &mut next), Reaction::default());
        assert!(r.interrupt());
        assert_eq!(r.frame("start", "1", &mut next), Reaction::default(), "nothing held");
    }

    #[test]
    fn output_frames_collect_until_done_then_the_answer_ends_the_run() {
        let mut r = run(1);
        let mut next = 2;
        r.frame("start", "1", &mut next);
        r.frame("out1", "hello ", &mut next);
        r.output(Stream::Stdout, b"raw\n");
        r.frame("out2", "oops\n", &mut next);
        r.frame("media", "image/png\nAAAA", &mut next);
        assert!(answer_now(&mut r).is_none(), "running, window open: nothing to say");
        assert_eq!(r.frame("done", "1 0", &mut next), Reaction::changed());
        let (answer, done) = answer_now(&mut r).unwrap();
        assert!(done);
        assert_eq!(answer.status, RunStatus::Finished);
        assert_eq!(answer.exit_code, Some(0));
        assert_eq!(text(&answer, "stdout"), "hello raw\n");
        assert_eq!(text(&answer, "stderr"), "oops\n");
        assert!(answer.console.iter().any(|item| item[0] == "media"));
        assert_eq!(r.frame("out1", "late", &mut next), Reaction::default());
    }

    #[test]
    fn a_done_of_another_step_is_ignored() {
        let mut r = run(5);
        let mut next = 6;
        assert_eq!(r.frame("done", "4 0", &mut next), Reaction::default());
        assert_eq!(r.frame("done", "garbage", &mut next), Reaction::default());
        assert!(r.is_live());
    }

    #[test]
    fn the_window_closing_answers_continued_with_the_output_so_far() {
        let mut r = run(1);
        let mut next = 2;
        r.frame("out1", "part", &mut next);
        let now = Instant::now();
        let (answer, done) = r.answer(now, now).unwrap();
        assert!(!done);
        assert_eq!(answer.status, RunStatus::Continued);
        assert_eq!(text(&answer, "stdout"), "part");
        assert_eq!(answer.exit_code, None);
    }

    #[test]
    fn input_requests_and_answers() {
        let mut r = run(1);
        let mut next = 2;
        assert_eq!(r.frame("input", "1", &mut next), Reaction::changed());
        let (answer, done) = answer_now(&mut r).unwrap();
        assert!(!done);
        assert_eq!(answer.status, RunStatus::WaitingInput);
        assert_eq!(answer.options, Some(json!({"is_password": true})));
        assert_eq!(r.resume(ExecMode::Continue, "ignored"), None, "continue only fetches output");
        assert_eq!(r.resume(ExecMode::Input, "line"), Some("line".to_owned()));
        assert_eq!(r.phase, Phase::Running);
        assert_eq!(r.resume(ExecMode::Input, "again"), None, "not waiting any more");
    }

    #[test]
    fn a_batch_runs_its_exec_step_after_a_successful_build() {
        let mut r = run(1);
        r.next_exec = Some("make run".to_owned());
        let mut next = 7;
        r.frame("out1", "built\n", &mut next);
        let reaction = r.frame("done", "1 0", &mut next);
        assert_eq!(reaction.next_step, Some((7, "make run".to_owned())));
        assert_eq!((r.step_seq, next), (7, 8));
        let (answer, done) = answer_now(&mut r).unwrap();
        assert!(!done);
        assert_eq!(answer.status, RunStatus::BuildFinished);
        assert_eq!(text(&answer, "stdout"), "built\n");
        assert!(!r.interrupt(), "the exec step has not started yet");
        assert!(r.frame("start", "7", &mut next).interrupt);
        r.frame("done", "7 130", &mut next);
        let (answer, done) = answer_now(&mut r).unwrap();
        assert!(done);
        assert_eq!((answer.status, answer.exit_code), (RunStatus::Finished, Some(130)));
    }

    #[test]
    fn a_failed_build_ends_the_batch_with_a_note() {
        let mut r = run(1);
        r.next_exec = Some("never".to_owned());
        let mut next = 2;
        let reaction = r.frame("done", "1 2", &mut next);
        assert_eq!(reaction.next_step, None);
        let (answer, _) = answer_now(&mut r).unwrap();
        assert_eq!(answer.exit_code, Some(2));
        assert!(text(&answer, "stderr").contains("build step failed with exit code 2"));
    }

    #[test]
    fn the_deadline_ends_the_run_as_exec_timeout() {
        let start = Instant::now();
        let mut r = RunState::new("r".to_owned(), 1024, start + Duration::from_secs(5), 1, 1);
        assert!(!r.time_out(start));
        assert!(r.time_out(start + Duration::from_secs(5)));
        assert!(!r.time_out(start + Duration::from_secs(6)), "only once");
        let (answer, done) = answer_now(&mut r).unwrap();
        assert!(done);
        assert_eq!(answer.status, RunStatus::ExecTimeout);
        assert!(text(&answer, "stderr").contains("time limit"));
    }

    #[test]
    fn an_ended_interpreter_ends_the_run_once() {
        let mut r = run(1);
        r.end(RunStatus::Finished, "[gone]");
        r.end(RunStatus::Finished, "[twice]");
        let (answer, done) = answer_now(&mut r).unwrap();
        assert!(done);
        let all = text(&answer, "stderr") + &text(&answer, "stdout");
        assert!(all.contains("[gone]") && !all.contains("[twice]"), "{all}");
    }
}
