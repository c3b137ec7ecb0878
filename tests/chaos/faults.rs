//! Starting the cluster's processes, and killing them in turn.

use super::*;

pub(super) async fn wait_manager(chaos: &Chaos, which: usize) {
    for _ in 0..300 {
        let probe = chaos.proxy.http.get(format!("http://127.0.0.1:{}/v3", chaos.proxy.ports[which])).send().await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("manager {which} did not start:\n{}", chaos.managers[which].lock().await.tail(30));
}

pub(super) async fn wait_agent_alive(chaos: &Chaos, which: usize, since: DateTime<Utc>) {
    let id = &chaos.agent_ids[which];
    for _ in 0..300 {
        let rows = chaos
            .query(&format!(
                "SELECT 1 FROM agents WHERE id = '{id}' AND status::text = 'ALIVE' AND last_heartbeat > '{}'",
                since.to_rfc3339()
            ))
            .await;
        if !rows.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent {id} did not come back:\n{}", chaos.agents[which].lock().await.tail(30));
}

pub(super) async fn wait_etcd(port: u16) {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        let health = http.get(format!("http://127.0.0.1:{port}/health")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not start");
}

pub(super) async fn kill_manager(chaos: &Chaos, which: usize) {
    chaos.begin_outage(Target::Manager(which));
    chaos.managers[which].lock().await.kill9().await;
    // Fixed on purpose: the outage lasts a while, with the load running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos.managers[which].lock().await.start();
    wait_manager(chaos, which).await;
    chaos.end_outage(Target::Manager(which));
}

pub(super) async fn kill_agent(chaos: &Chaos, which: usize) {
    let id = chaos.agent_ids[which].clone();
    chaos.begin_outage(Target::Agent(which));
    let killed = Utc::now();
    chaos.agents[which].lock().await.kill9().await;
    // It is declared LOST, and every session it held (and any placed on it in the
    // moments after) ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ended_after = None;
    let mut lost_after = None;
    while Instant::now() < deadline {
        let live = chaos.query(&format!("SELECT id FROM kernels WHERE agent = '{id}' AND {LIVE}")).await;
        let lost = chaos.query(&format!("SELECT 1 FROM agents WHERE id = '{id}' AND status::text = 'LOST'")).await;
        let waited = secs(Utc::now() - killed);
        if !lost.is_empty() && lost_after.is_none() {
            lost_after = Some(waited);
        }
        // Wait out the placement window too: a create placed late must end as well.
        if live.is_empty() && !lost.is_empty() && waited > PLACEMENT_WINDOW {
            ended_after = Some(waited);
            break;
        }
        if !live.is_empty() {
            ended_after = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The time at which the last of them ended.
    let rows = chaos
        .query(&format!(
            "SELECT MAX(terminated_at) AS last FROM kernels WHERE agent = '{id}' AND created_at <= '{}' \
             AND status::text IN ('TERMINATED', 'ERROR') AND terminated_at >= '{}'",
            Utc::now().to_rfc3339(),
            killed.to_rfc3339()
        ))
        .await;
    let last: Option<DateTime<Utc>> = rows.first().and_then(|r| r.try_get("", "last").ok()).flatten();
    match ended_after {
        None => chaos.violation(format!("{id}: not LOST, or its sessions not ended, 60 s after its kill")),
        Some(_) => {
            let took = last.map(|t| secs(t - killed).max(0.0)).unwrap_or(0.0);
            let lost = lost_after.unwrap_or(0.0);
            eprintln!("chaos: {id} declared LOST {lost:.2} s after its kill, its sessions ended {took:.2} s after");
            chaos.end_times.lock().unwrap().push(took);
            chaos.lost_times.lock().unwrap().push(lost);
            if lost > HEARTBEAT_TIMEOUT + END_SLACK {
                chaos.violation(format!("{id}: declared LOST {lost:.2} s after its kill"));
            }
            if took > HEARTBEAT_TIMEOUT + END_SLACK {
                chaos.violation(format!("{id}: its sessions ended {took:.2} s after its kill"));
            }
        }
    }
    let restarted = Utc::now();
    chaos.agents[which].lock().await.start();
    wait_agent_alive(chaos, which, restarted).await;
    chaos.end_outage(Target::Agent(which));
}

pub(super) async fn kill_etcd(chaos: &Chaos) {
    chaos.begin_outage(Target::Etcd);
    chaos.etcd.lock().await.kill9().await;
    // Fixed on purpose: etcd stays down for longer than the heartbeat timeout.
    tokio::time::sleep(Duration::from_secs_f64(HEARTBEAT_TIMEOUT * 1.6)).await;
    chaos.etcd.lock().await.start();
    wait_etcd(chaos.etcd_port).await;
    chaos.end_outage(Target::Etcd);
}

/// One round of faults, each followed by a quiet spell (the quiet spells are fixed on
/// purpose: the load runs through them, and nothing may go wrong meanwhile).
pub(super) async fn fault_round(chaos: &Chaos) {
    let quiet = Duration::from_secs(5);
    for which in 0..MANAGERS {
        kill_manager(chaos, which).await;
        tokio::time::sleep(quiet).await;
    }
    for which in 0..AGENTS {
        kill_agent(chaos, which).await;
        tokio::time::sleep(quiet).await;
    }
    kill_etcd(chaos).await;
    // The liveness checker's grace after the outage, then quiet.
    tokio::time::sleep(quiet + Duration::from_secs_f64(HEARTBEAT_TIMEOUT)).await;
}

/// Sets up the database, etcd and the processes; `None` (skipped) without services.
pub(super) async fn setup() -> Option<Arc<Chaos>> {
    let (Ok(db_url), Ok(redis_url)) =
        (std::env::var("BACKENDAI_TEST_DB_URL"), std::env::var("BACKENDAI_TEST_REDIS_URL"))
    else {
        skip("set BACKENDAI_TEST_DB_URL and BACKENDAI_TEST_REDIS_URL");
        return None;
    };
    let Some(etcd_bin) = which("etcd") else {
        skip("no etcd binary on PATH (apt-get install etcd-server)");
        return None;
    };
    let manager_bin = PathBuf::from(env!("CARGO_BIN_EXE_backendai-manager"));
    let agent_bin = crate::agent_binary::agent_binary();
    let dir = tempfile::Builder::new().prefix("backendai-chaos.").tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    eprintln!("chaos: logs in {}", dir.display());

    // A database of its own.
    let db_name = format!("bai_chaos_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(&db_url).await.unwrap();
    admin.execute_unprepared(&format!("CREATE DATABASE \"{db_name}\"")).await.unwrap();
    admin.close().await.ok();
    let (base, _) = db_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{db_name}");

    // etcd of its own: it gets killed.
    let etcd_port = free_port();
    let peer_port = free_port();
    let etcd_args = [
        "--name".to_owned(),
        "chaos".to_owned(),
        "--data-dir".to_owned(),
        dir.join("etcd").to_string_lossy().into_owned(),
        "--listen-client-urls".to_owned(),
        format!("http://127.0.0.1:{etcd_port}"),
        "--advertise-client-urls".to_owned(),
        format!("http://127.0.0.1:{etcd_port}"),
        "--listen-peer-urls".to_owned(),
        format!("http://127.0.0.1:{peer_port}"),
        "--initial-advertise-peer-urls".to_owned(),
        format!("http://127.0.0.1:{peer_port}"),
        "--initial-cluster".to_owned(),
        format!("chaos=http://127.0.0.1:{peer_port}"),
    ];
    let mut etcd = Proc::new("etcd", &etcd_bin, etcd_args.to_vec(), vec![], &dir);
    etcd.start();
    wait_etcd(etcd_port).await;

    let namespace = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let redis_addr = redis_url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let secret = format!("chaos-cluster-secret-{}", uuid::Uuid::new_v4().simple());
    let common = |data: &str| -> Vec<String> {
        [
            "--db-url",
            &url,
            "--etcd-addr",
            &format!("127.0.0.1:{etcd_port}"),
            "--redis-addr",
            &redis_addr,
            "--namespace",
            &namespace,
            "--data-dir",
            &dir.join(data).to_string_lossy(),
            "--heartbeat-timeout",
            &HEARTBEAT_TIMEOUT.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let manager_env = vec![
        ("BACKENDAI_MANAGER__CLUSTER_SECRET".to_owned(), secret.clone()),
        ("BACKENDAI_LOCAL_AGENT__ENABLED".to_owned(), "false".to_owned()),
        ("BACKENDAI_MANAGER__WORKERS".to_owned(), "2".to_owned()),
        // A create or destroy a killed manager left half-way is settled after these (+10 s).
        ("BACKENDAI_MANAGER__AGENT_CREATE_TIMEOUT".to_owned(), "10".to_owned()),
        ("BACKENDAI_MANAGER__AGENT_CALL_TIMEOUT".to_owned(), "10".to_owned()),
        ("BACKENDAI_DB__MAX_CONNECTIONS".to_owned(), "8".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    // As an operator sets up a cluster: schema, a key, the images.
    let fixture = dir.join("keypair.json");
    std::fs::write(
        &fixture,
        json!({"keypairs": [{
            "user_id": 7, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "is_active": true,
            "is_admin": false, "resource_policy": null, "concurrency_limit": 100, "concurrency_used": 0,
            "rate_limit": 10_000_000, "num_queries": 0
        }]})
        .to_string(),
    )
    .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for args in [
        vec!["schema", "oneshot"],
        vec!["fixture", "populate", fixture.to_str().unwrap()],
        vec!["etcd", "update-images", root.join("fixtures/images.toml").to_str().unwrap()],
        vec!["etcd", "update-aliases", root.join("fixtures/aliases.toml").to_str().unwrap()],
    ] {
        let out = std::process::Command::new(&manager_bin)
            .args(common("setup"))
            .args(&args)
            .envs(manager_env.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let ports: Vec<u16> = (0..MANAGERS).map(|_| free_port()).collect();
    let managers = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut args = common(&format!("manager{i}"));
            args.extend(["--service-port".to_owned(), port.to_string(), "--events-port".to_owned()]);
            args.push(free_port().to_string());
            args.push("serve".to_owned());
            Proc::new(&format!("manager{i}"), &manager_bin, args, manager_env.clone(), &dir)
        })
        .collect::<Vec<_>>();
    let agent_ids: Vec<String> = (0..AGENTS).map(|i| format!("i-chaos{i}-{}", &namespace[5..])).collect();
    let agents = agent_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let args = vec![
                "--agent-id".to_owned(),
                id.clone(),
                "--listen".to_owned(),
                format!("127.0.0.1:{}", free_port()),
                "--namespace".to_owned(),
                namespace.clone(),
                "--redis-addr".to_owned(),
                redis_addr.clone(),
                "--scratch-root".to_owned(),
                dir.join(format!("scratch{i}")).to_string_lossy().into_owned(),
            ];
            let env = vec![
                ("BACKENDAI_AGENT_CLUSTER_SECRET".to_owned(), secret.clone()),
                ("BACKENDAI_AGENT_HEARTBEAT_INTERVAL".to_owned(), HEARTBEAT_INTERVAL.to_string()),
                ("BACKENDAI_AGENT_STATS_INTERVAL".to_owned(), "2".to_owned()),
                ("BACKENDAI_AGENT_SLOTS__CPU".to_owned(), "4".to_owned()),
                ("BACKENDAI_AGENT_SLOTS__MEM".to_owned(), "8192".to_owned()),
                ("RUST_LOG".to_owned(), "info".to_owned()),
            ];
            Proc::new(&format!("agent{i}"), &agent_bin, args, env, &dir)
        })
        .collect::<Vec<_>>();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    let chaos = Arc::new(Chaos {
        dir,
        db: Database::connect(&url).await.unwrap(),
        db_name,
        redis: redis::Client::open(redis_url.as_str()).unwrap(),
        namespace,
        proxy: Proxy { http, ports, next: AtomicUsize::new(0) },
        etcd: tokio::sync::Mutex::new(etcd),
        etcd_port,
        managers: managers.into_iter().map(tokio::sync::Mutex::new).collect(),
        agents: agents.into_iter().map(tokio::sync::Mutex::new).collect(),
        agent_ids,
        outages: Mutex::new(vec![]),
        calls: Mutex::new(vec![]),
        violations: Mutex::new(vec![]),
        end_times: Mutex::new(vec![]),
        lost_times: Mutex::new(vec![]),
        lost_seen: Mutex::new(vec![]),
        stop_load: AtomicBool::new(false),
    });
    let started = Utc::now();
    for (i, manager) in chaos.managers.iter().enumerate() {
        manager.lock().await.start();
        wait_manager(&chaos, i).await;
    }
    for (i, agent) in chaos.agents.iter().enumerate() {
        agent.lock().await.start();
        wait_agent_alive(&chaos, i, started).await;
    }
    Some(chaos)
}

pub(super) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}
