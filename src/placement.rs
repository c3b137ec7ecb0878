//! Which agents the scheduler may place sessions on, as the planner sees them
//! ([`planner::AgentSlots`]): alive, heard from recently, and not suspected of being
//! unreachable. What goes where is the planner's decision ([`crate::scheduler`]).

use chrono::Utc;
use entity::agents;

/// The agents among `alive` that may take sessions now: agents that missed two
/// heartbeats and agents in `avoid` (found unreachable by a create) are left out.
pub fn eligible(alive: Vec<agents::Model>, avoid: &[String], now: chrono::DateTime<Utc>) -> Vec<agents::Model> {
    alive.into_iter().filter(|agent| recently_heard(agent, now) && !avoid.contains(&agent.id)).collect()
}

/// The planner's view of an agent.
pub fn slots_of(agent: &agents::Model) -> planner::AgentSlots {
    planner::AgentSlots {
        id: agent.id.clone(),
        capacity: planner::Slots { cpu: agent.cpu_slots, mem: agent.mem_slots, gpu: agent.gpu_slots },
        used: planner::Slots { cpu: agent.used_cpu_slots, mem: agent.used_mem_slots, gpu: agent.used_gpu_slots },
    }
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

    #[test]
    fn agents_that_missed_two_heartbeats_or_failed_a_create_are_left_out() {
        let alive = vec![agent("silent", 4096, 7), agent("failed", 4096, 0), agent("ok", 1024, 5)];
        let ids: Vec<String> = eligible(alive, &["failed".to_owned()], Utc::now()).into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["ok"]);
    }

    #[test]
    fn the_planner_sees_capacity_and_use() {
        let slots = slots_of(&agent("a", 1024, 0));
        assert_eq!(slots.capacity, planner::Slots { cpu: 4.0, mem: 4096, gpu: 0.0 });
        assert_eq!(slots.used.mem, 3072);
    }
}
