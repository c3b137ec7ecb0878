//! What is checked once the load stopped: the cluster's state, and every call.

use super::*;

pub(super) async fn deadlocks(chaos: &Chaos) -> i64 {
    let rows =
        chaos.query(&format!("SELECT deadlocks FROM pg_stat_database WHERE datname = '{}'", chaos.db_name)).await;
    rows.first().and_then(|r| r.try_get::<i64>("", "deadlocks").ok()).unwrap_or(0)
}

/// The kernel ids each agent reported in its last heartbeat (from the bus), and when
/// it took that list (Unix ms, 0 when the report does not say).
pub(super) async fn reported_kernels(chaos: &Chaos) -> HashMap<String, (i64, Vec<String>)> {
    let mut conn = chaos.redis.get_multiplexed_async_connection().await.unwrap();
    let stream = protocol::bus::heartbeats_stream(&chaos.namespace);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(200)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for entry in reply.ids {
        let Some(body) = entry.get::<String>(protocol::bus::BODY_FIELD) else { continue };
        let Ok(envelope) = serde_json::from_str::<Value>(&body) else { continue };
        let agent = envelope["agent_id"].as_str().unwrap_or_default().to_owned();
        if out.contains_key(&agent) {
            continue;
        }
        let kernels = envelope["data"]["kernels"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let taken_at = envelope["data"]["taken_at"].as_i64().unwrap_or_default();
        out.insert(agent, (taken_at, kernels));
    }
    out
}

/// Kernel processes (with `BACKENDAI_KERNEL_ID` in their environment) orphaned outside
/// any of `agent_pids` (their ancestry reaches init without passing an agent; those of
/// other programs on the machine, such as other tests, are left out): pid, kernel id,
/// and the ancestry that was followed.
pub(super) fn stray_kernel_processes(agent_pids: &HashSet<u32>) -> Vec<(u32, String, String)> {
    let parent = |pid: u32| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
    };
    let mut strays = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let Some(id) = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"BACKENDAI_KERNEL_ID".as_slice()))
            .and_then(|rest| rest.strip_prefix(b"=".as_slice()))
        else {
            continue;
        };
        let mut cursor = pid;
        let mut inside = false;
        let mut orphaned = false;
        let mut chain = vec![];
        for _ in 0..64 {
            let comm = std::fs::read_to_string(format!("/proc/{cursor}/comm")).unwrap_or_default();
            chain.push(format!("{cursor}:{}", comm.trim()));
            match parent(cursor) {
                Some(p) if agent_pids.contains(&p) => {
                    inside = true;
                    break;
                }
                Some(p) if p > 1 => cursor = p,
                Some(_) => {
                    orphaned = true;
                    break;
                }
                None => break,
            }
        }
        if !inside && orphaned {
            strays.push((pid, String::from_utf8_lossy(id).into_owned(), chain.join(" < ")));
        }
    }
    strays
}

/// The checks once the load has stopped and the cluster has settled.
pub(super) async fn final_checks(chaos: &Chaos) {
    // Nothing stuck: every session ends PREPARING/TERMINATING within the call timeouts.
    let mut stuck = vec![];
    for _ in 0..200 {
        stuck = chaos
            .query("SELECT sess_id, status::text AS status FROM kernels WHERE status::text NOT IN ('RUNNING', 'TERMINATED', 'ERROR')")
            .await
            .iter()
            .map(|r| format!("{} {}", r.try_get::<String>("", "sess_id").unwrap(), r.try_get::<String>("", "status").unwrap()))
            .collect();
        if stuck.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !stuck.is_empty() {
        chaos.violation(format!("stuck sessions: {stuck:?}"));
    }
    // Quota: concurrency_used equals the live sessions of the key.
    let rows = chaos
        .query(&format!(
            "SELECT k.concurrency_used AS used, (SELECT COUNT(*) FROM kernels WHERE access_key = k.access_key AND {LIVE}) AS live \
             FROM keypairs k WHERE k.access_key = '{ACCESS_KEY}'"
        ))
        .await;
    let used: i32 = rows[0].try_get("", "used").unwrap();
    let live: i64 = rows[0].try_get("", "live").unwrap();
    if i64::from(used) != live {
        chaos.violation(format!("concurrency_used {used} but {live} live sessions"));
    }
    // Slots: each agent's occupied slots equal the sum of its live kernels'.
    let rows = chaos
        .query(&format!(
            "SELECT a.id, a.used_cpu_slots AS cpu, a.used_mem_slots AS mem, \
             COALESCE((SELECT SUM(cpu_slot) FROM kernels WHERE agent = a.id AND {LIVE}), 0) AS kcpu, \
             COALESCE((SELECT SUM(mem_slot) FROM kernels WHERE agent = a.id AND {LIVE}), 0)::bigint AS kmem \
             FROM agents a"
        ))
        .await;
    for row in rows {
        let id: String = row.try_get("", "id").unwrap();
        let (cpu, kcpu): (f64, f64) = (row.try_get("", "cpu").unwrap(), row.try_get("", "kcpu").unwrap());
        let (mem, kmem): (i64, i64) = (row.try_get("", "mem").unwrap(), row.try_get("", "kmem").unwrap());
        if (cpu - kcpu).abs() > 1e-6 || mem != kmem {
            chaos.violation(format!("{id}: occupies cpu {cpu} mem {mem}, its live kernels cpu {kcpu} mem {kmem}"));
        }
    }
    // Kernels: what the agents hold is what the database has live, and no kernel
    // process runs outside an agent.
    let live_ids: HashSet<String> = chaos
        .query(&format!("SELECT id::text AS id FROM kernels WHERE {LIVE}"))
        .await
        .iter()
        .map(|r| r.try_get("", "id").unwrap())
        .collect();
    // Judged on reports taken after that read: a kernel ended just before it may still
    // be in an older one.
    let read_at = Utc::now().timestamp_millis();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reports = loop {
        let reports = reported_kernels(chaos).await;
        let stale: Vec<&String> = chaos
            .agent_ids
            .iter()
            .filter(|id| reports.get(*id).is_none_or(|(taken_at, _)| *taken_at <= read_at))
            .collect();
        if stale.is_empty() {
            break reports;
        }
        if Instant::now() > deadline {
            chaos.violation(format!("no heartbeat taken after the final checks began from {stale:?}"));
            break reports;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (agent, (_, kernels)) in reports {
        let unowned: Vec<&String> = kernels.iter().filter(|k| !live_ids.contains(*k)).collect();
        if !unowned.is_empty() {
            chaos.violation(format!("{agent} holds kernels no live session owns: {unowned:?}"));
        }
    }
    let mut agent_pids = HashSet::new();
    for agent in &chaos.agents {
        agent_pids.extend(agent.lock().await.pid());
    }
    // Seen in every look for 10 s: not a process starting or exiting at that moment,
    // however busy the machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut strays = stray_kernel_processes(&agent_pids);
    while !strays.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again: HashSet<u32> = stray_kernel_processes(&agent_pids).into_iter().map(|(pid, _, _)| pid).collect();
        strays.retain(|(pid, _, _)| again.contains(pid));
    }
    if !strays.is_empty() {
        chaos.violation(format!("kernel processes outside any agent: {strays:?}"));
    }
}

/// Judges every call and every abnormal end of a session.
pub(super) async fn judge(chaos: &Chaos) -> BTreeMap<&'static str, usize> {
    let mut figures = BTreeMap::new();
    // Where each session was placed.
    let placed: HashMap<String, (Option<String>, DateTime<Utc>)> = chaos
        .query("SELECT sess_id, agent, created_at FROM kernels")
        .await
        .iter()
        .map(|r| {
            let created: DateTime<chrono::FixedOffset> = r.try_get("", "created_at").unwrap();
            (r.try_get("", "sess_id").unwrap(), (r.try_get("", "agent").unwrap(), created.with_timezone(&Utc)))
        })
        .collect();
    let calls = std::mem::take(&mut *chaos.calls.lock().unwrap());
    let window = chrono::TimeDelta::milliseconds((PLACEMENT_WINDOW * 1000.0) as i64);
    let mut excused = 0;
    for call in &calls {
        *figures
            .entry(match call.kind {
                Kind::Create => "calls: create",
                Kind::Execute => "calls: execute",
                Kind::Destroy => "calls: destroy",
            })
            .or_default() += 1;
        let Some(failure) = &call.failure else { continue };
        let on_killed_manager = chaos.down_during(Target::Manager(call.manager), call.start, call.end);
        let on_killed_agent = placed.get(&call.token).is_some_and(|(agent, created)| {
            agent
                .as_deref()
                .is_some_and(|agent| chaos.agent_killed_during(agent, (*created).min(call.start) - window, call.end))
        });
        // A create refused before any row was written, while an agent was just killed.
        let unplaced_create = call.kind == Kind::Create
            && !placed.contains_key(&call.token)
            && (0..AGENTS).any(|i| chaos.down_during(Target::Agent(i), call.start - window, call.end));
        if on_killed_manager || on_killed_agent || unplaced_create {
            excused += 1;
        } else {
            chaos.violation(format!(
                "{:?} {} on manager {} at {} failed: {failure}",
                call.kind,
                call.token,
                call.manager,
                call.start.format("%H:%M:%S%.3f")
            ));
        }
    }
    figures.insert("calls: failed, in flight on a killed process or aimed at a killed agent", excused);
    // Sessions that ended abnormally: only on agents that were killed.
    let abnormal = chaos
        .query(
            "SELECT sess_id, agent, status::text AS status, COALESCE(status_info, '') AS info, created_at, terminated_at \
             FROM kernels WHERE status::text = 'ERROR' OR (status::text = 'TERMINATED' AND status_info IS DISTINCT FROM 'user-requested')",
        )
        .await;
    let mut lost_on_survivors = 0;
    for row in &abnormal {
        let token: String = row.try_get("", "sess_id").unwrap();
        let agent: Option<String> = row.try_get("", "agent").unwrap();
        let info: String = row.try_get("", "info").unwrap();
        let created: DateTime<chrono::FixedOffset> = row.try_get("", "created_at").unwrap();
        let ended: Option<DateTime<chrono::FixedOffset>> = row.try_get("", "terminated_at").unwrap();
        let created = created.with_timezone(&Utc);
        let ended = ended.map(|e| e.with_timezone(&Utc)).unwrap_or_else(Utc::now);
        let on_killed_agent = agent.as_deref().is_some_and(|a| chaos.agent_killed_during(a, created - window, ended));
        // A create in flight on a manager that was killed (ended when found stranded).
        let interrupted = info == "creation-interrupted"
            && (0..MANAGERS).any(|m| chaos.down_during(Target::Manager(m), created - window, created + window));
        let explained = on_killed_agent || interrupted;
        if !explained {
            lost_on_survivors += 1;
            chaos.violation(format!("session {token} on {agent:?} ended {info} though its agent was not killed"));
        }
    }
    figures.insert(
        "sessions ended by a fault (killed agent, or create cut by a killed manager)",
        abnormal.len() - lost_on_survivors,
    );
    figures.insert("sessions lost on surviving agents", lost_on_survivors);
    // LOST only for killed agents.
    let mut false_lost = 0;
    for (agent, at) in chaos.lost_seen.lock().unwrap().clone() {
        let since = at - chrono::TimeDelta::seconds((HEARTBEAT_TIMEOUT + 10.0) as i64);
        if !chaos.agent_killed_during(&agent, since, at) {
            false_lost += 1;
            chaos.violation(format!("{agent} declared LOST at {at} though it was not killed"));
        }
    }
    figures.insert("false LOST", false_lost);
    let sessions = placed.len();
    figures.insert("sessions created", sessions);
    let mut latencies: Vec<f64> = calls
        .iter()
        .filter(|c| c.kind == Kind::Execute && c.failure.is_none())
        .map(|c| secs(c.end - c.start))
        .collect();
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        eprintln!("chaos: execute latency p50 {:.1} ms, p99 {:.1} ms", at(0.5) * 1000.0, at(0.99) * 1000.0);
    }
    figures
}
