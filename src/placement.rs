//! Placement: which agents may take a session, in the order they are tried. The ledger
//! (`crate::ledger`) then reserves the first that still has room in its transaction.

use chrono::Utc;
use entity::agents;

use crate::images::ResolvedImage;

/// The agents among `alive` that may take a session of `image` now, most free first
/// (sessions spread out: "dispersed"). Agents in `avoid` (where this create already
/// failed) and agents that missed two heartbeats are left out.
pub fn candidates(
    alive: Vec<agents::Model>,
    image: &ResolvedImage,
    avoid: &[String],
    now: chrono::DateTime<Utc>,
) -> Vec<agents::Model> {
    let mut candidates: Vec<agents::Model> = alive
        .into_iter()
        .filter(|agent| agent.has_room(image.cpu, image.mem, image.gpu) && recently_heard(agent, now))
        .filter(|agent| !avoid.contains(&agent.id))
        .collect();
    candidates.sort_by(|a, b| b.free_slots().partial_cmp(&a.free_slots()).unwrap_or(std::cmp::Ordering::Equal));
    candidates
}

/// Whether an agent heard from at `last_heartbeat`, beating every `interval` seconds,
/// may get new sessions: not when it missed two heartbeats.
fn recently_heard(agent: &agents::Model, now: chrono::DateTime<Utc>) -> bool {
    match (agent.heartbeat_interval, agent.last_heartbeat) {
        (Some(interval), Some(last)) if interval > 0.0 => {
            let silent = now.signed_duration_since(last.with_timezone(&Utc));
            silent.num_milliseconds() as f64 <= 2.0 * interval * 1000.0
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use entity::agents::AgentStatus;
    use protocol::{ImageSpec, RunnerKind};

    fn agent(id: &str, free_mem: i64, heard_secs_ago: i64) -> agents::Model {
        let now = Utc::now().fixed_offset();
        agents::Model {
            id: id.to_owned(),
            status: AgentStatus::Alive,
            region: "local".to_owned(),
            addr: "127.0.0.1:1".to_owned(),
            first_contact: now,
            lost_at: None,
            mem_slots: 4096,
            cpu_slots: 4.0,
            gpu_slots: 0.0,
            used_mem_slots: 4096 - free_mem,
            used_cpu_slots: 0.0,
            used_gpu_slots: 0.0,
            last_heartbeat: Some(now - chrono::Duration::seconds(heard_secs_ago)),
            heartbeat_interval: Some(3.0),
        }
    }

    fn image(mem: i64) -> ResolvedImage {
        let spec = ImageSpec {
            name: "python3".to_owned(),
            tag: "latest".to_owned(),
            runner: RunnerKind::Python,
            command: None,
        };
        ResolvedImage { spec, cpu: 1.0, mem, gpu: 0.0 }
    }

    fn ids(agents: &[agents::Model]) -> Vec<&str> {
        agents.iter().map(|a| a.id.as_str()).collect()
    }

    #[test]
    fn most_free_first_and_only_agents_with_room() {
        let alive = vec![agent("small", 512, 0), agent("big", 4096, 0), agent("full", 100, 0), agent("mid", 2048, 0)];
        assert_eq!(ids(&candidates(alive, &image(256), &[], Utc::now())), ["big", "mid", "small"]);
    }

    #[test]
    fn agents_that_missed_two_heartbeats_or_failed_this_create_are_left_out() {
        let alive = vec![agent("silent", 4096, 7), agent("failed", 4096, 0), agent("ok", 1024, 5)];
        assert_eq!(ids(&candidates(alive, &image(256), &["failed".to_owned()], Utc::now())), ["ok"]);
    }
}
