//! Limits and lifecycle: timeouts, output cap, memory and fork bombs, kernels dying by
//! themselves, events to the manager.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::{stream, test_config, EventSink, TestAgent};

async fn run_until_done(agent: &TestAgent, k: &str, code: &str, limit: Duration) -> Vec<Value> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let end = Instant::now() + limit;
    let mut results = vec![agent.execute(k, &run_id, "query", code, Value::Null).await];
    while results.last().unwrap()["status"] == "continued" {
        assert!(Instant::now() < end, "run did not end in {limit:?}");
        results.push(agent.execute(k, &run_id, "query", "", Value::Null).await);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_forever_hits_the_run_timeout_and_the_kernel_is_reset() {
    let agent = TestAgent::spawn().await;
    for (runner, code) in [("python", "import time\ntime.sleep(1e9)"), ("shell", "sleep 1e9")] {
        let k = agent.create(runner, json!({"exec_timeout": 1.0})).await;
        let started = Instant::now();
        let results = run_until_done(&agent, &k, code, Duration::from_secs(10)).await;
        assert_eq!(results.last().unwrap()["status"], "exec-timeout", "{runner}");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(stream(&results, "stderr").contains("time limit"));
        // The kernel is usable again (a fresh interpreter).
        let code = if runner == "python" { "print('alive')" } else { "echo alive" };
        let after = run_until_done(&agent, &k, code, Duration::from_secs(10)).await;
        assert_eq!(stream(&after, "stdout"), "alive\n", "{runner}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_output_is_capped_with_a_note() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({"exec_timeout": 2.0, "max_output_bytes": 100000})).await;
    let results = run_until_done(&agent, &k, "while True:\n    print('x' * 1000)", Duration::from_secs(15)).await;
    assert_eq!(results.last().unwrap()["status"], "exec-timeout");
    let out = stream(&results, "stdout");
    assert!(out.len() <= 100000 && out.len() > 50000, "{}", out.len());
    assert!(stream(&results, "stderr").contains("exceeded 100000 bytes"));
    // Raw output from a subprocess is capped the same way.
    let k = agent.create("shell", json!({"exec_timeout": 2.0, "max_output_bytes": 50000})).await;
    let results = run_until_done(&agent, &k, "yes", Duration::from_secs(15)).await;
    assert!(stream(&results, "stdout").len() <= 50000);
    assert!(stream(&results, "stderr").contains("exceeded 50000 bytes"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_fails_inside_the_kernel() {
    let agent = TestAgent::spawn().await;
    let k = agent.create("python", json!({"mem_slot": 256})).await;
    let results = run_until_done(&agent, &k, "x = bytearray(2 * 1024**3)", Duration::from_secs(10)).await;
    assert!(stream(&results, "stderr").contains("MemoryError"));
    let results = run_until_done(
        &agent,
        &k,
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))",
        Duration::from_secs(20),
    )
    .await;
    assert!(stream(&results, "stderr").contains("MemoryError"));
    let results = run_until_done(&agent, &k, "del chunks\nprint('survived')", Duration::from_secs(10)).await;
    assert_eq!(stream(&results, "stdout"), "survived\n");
    agent.stop().await;
}

fn processes_of_uid(uid: u32) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())) {
            if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
                let real = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next().map(str::to_owned));
                let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
                if real.as_deref() == Some(&uid.to_string()) && !zombie {
                    n += 1;
                }
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_by_the_process_limit() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kernels only get their own uid (and RLIMIT_NPROC) as root");
        return;
    }
    let mut config = test_config();
    config.sandbox.max_processes = 32;
    let agent = TestAgent::spawn_with(config).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (status, created) = agent
        .call(
            Method::POST,
            "/kernels",
            Some(
                json!({"kernel_id": id, "image": {"name": "bash", "runner": "shell"}, "limits": {"exec_timeout": 3.0}}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let uid = created["runtime"]["uid"].as_u64().expect("kernel has its own uid") as u32;
    assert_ne!(uid, 0);
    // Make sure the sandbox really is in place before unleashing anything.
    let check = run_until_done(&agent, &id, "id -u; ulimit -u", Duration::from_secs(5)).await;
    assert_eq!(stream(&check, "stdout"), format!("{uid}\n32\n"));

    let watcher = tokio::spawn(async move {
        let mut max = 0;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            max = max.max(processes_of_uid(uid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max
    });
    let results = run_until_done(&agent, &id, "bomb() { bomb | bomb & }; bomb", Duration::from_secs(20)).await;
    let max = watcher.await.unwrap();
    assert!(max <= 32, "{max} processes of the kernel uid");
    assert!(matches!(results.last().unwrap()["status"].as_str(), Some("exec-timeout" | "finished")));
    // The kernel survives (or is reset) and nothing of the bomb is left after a destroy.
    let after = run_until_done(&agent, &id, "sleep 3; echo ok", Duration::from_secs(10)).await;
    assert!(stream(&after, "stdout").contains("ok") || after.last().unwrap()["status"] == "exec-timeout");
    let (status, _) = agent.call(Method::DELETE, &format!("/kernels/{id}"), None).await;
    assert_eq!(status, 200);
    // SIGKILL is asynchronous and orphans are reaped by init: give them a moment.
    let end = Instant::now() + Duration::from_secs(3);
    while processes_of_uid(uid) > 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(processes_of_uid(uid), 0);
    agent.stop().await;
}

async fn agent_with_events() -> (TestAgent, EventSink) {
    let sink = EventSink::start().await;
    let mut config = test_config();
    config.event_addr = Some(sink.addr.to_string());
    (TestAgent::spawn_with(config).await, sink)
}

fn is_event(e: &Value, name: &str, kernel: &str) -> bool {
    e["event"] == name && e["data"]["kernel_id"] == kernel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_killed_from_outside_is_reported() {
    let (agent, sink) = agent_with_events().await;
    let id = uuid::Uuid::new_v4().to_string();
    let (_, created) = agent
        .call(
            Method::POST,
            "/kernels",
            Some(json!({"kernel_id": id, "image": {"name": "python3", "runner": "python"}})),
        )
        .await;
    let pid = created["runtime"]["pid"].as_i64().unwrap() as i32;
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let event = sink
        .wait_for(Duration::from_secs(3), |e| is_event(e, "kernel_terminated", &id))
        .await
        .expect("kernel_terminated event");
    assert!(killed_at.elapsed() < Duration::from_secs(1));
    assert_eq!(event["data"]["reason"], "killed");
    assert_eq!(event["agent_id"].as_str().map(|s| s.starts_with("i-test")), Some(true));
    assert!(event["data"]["stats"].is_object());
    let (status, body) = agent
        .call(
            Method::POST,
            &format!("/kernels/{id}/execute"),
            Some(json!({"run_id": "x", "mode": "query", "code": "1"})),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "https://api.backend.ai/probs/kernel-not-found");
    assert_eq!(*sink.unauthorized.lock().unwrap(), 0);
    agent.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_exits_is_reported_with_its_exit_code() {
    let (agent, sink) = agent_with_events().await;
    let k = agent.create("python", json!({})).await;
    let results = run_until_done(&agent, &k, "import os\nprint('bye')\nos._exit(3)", Duration::from_secs(5)).await;
    assert_eq!(results.last().unwrap()["status"], "finished");
    assert!(stream(&results, "stderr").contains("ended unexpectedly"));
    let event = sink
        .wait_for(Duration::from_secs(3), |e| is_event(e, "kernel_terminated", &k))
        .await
        .expect("kernel_terminated event");
    assert_eq!(event["data"]["reason"], "exited");
    assert_eq!(event["data"]["exit_code"], 3);
    agent.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_reach_the_manager() {
    let (agent, sink) = agent_with_events().await;
    let started =
        sink.wait_for(Duration::from_secs(3), |e| e["event"] == "instance_started").await.expect("instance_started");
    assert_eq!(started["data"]["addr"], agent.addr.to_string());
    assert!(started["data"]["slots"]["cpu"].as_f64().unwrap() >= 1.0);
    assert!(started["data"]["slots"]["mem"].as_i64().unwrap() > 0);
    let k1 = agent.create("python", json!({})).await;
    let k2 = agent.create("shell", json!({})).await;
    agent.run_to_end(&k1, "x = bytearray(10**6)").await;
    let heartbeat = sink
        .wait_for(Duration::from_secs(3), |e| {
            e["event"] == "instance_heartbeat" && e["data"]["kernels"].as_array().is_some_and(|k| k.len() == 2)
        })
        .await
        .expect("heartbeat with the kernels");
    assert_eq!(heartbeat["data"]["region"], "local");
    let stats = sink
        .wait_for(Duration::from_secs(3), |e| e["event"] == "kernel_stats" && e["data"]["stats"][&k1].is_object())
        .await
        .expect("kernel_stats");
    let s = &stats["data"]["stats"][&k1];
    assert!(s["mem_cur_bytes"].as_u64().unwrap() > 1_000_000, "{s}");
    for field in [
        "cpu_used",
        "mem_max_bytes",
        "net_rx_bytes",
        "net_tx_bytes",
        "io_read_bytes",
        "io_write_bytes",
        "io_max_scratch_size",
        "io_cur_scratch_size",
    ] {
        assert!(s[field].is_u64(), "{field} in {s}");
    }

    let (status, body) = agent.call(Method::DELETE, &format!("/kernels/{k1}"), None).await;
    assert_eq!(status, 200);
    assert!(body["stats"]["cpu_used"].is_u64());
    assert!(!agent.scratch_root.join(&k1).exists());
    let ended = sink.wait_for(Duration::from_secs(3), |e| is_event(e, "kernel_terminated", &k1)).await.unwrap();
    assert_eq!(ended["data"]["reason"], "user-requested");

    let scratch_root = agent.scratch_root.clone();
    agent.stop().await;
    let ended = sink
        .wait_for(Duration::from_secs(3), |e| is_event(e, "kernel_terminated", &k2))
        .await
        .expect("k2 terminated at shutdown");
    assert_eq!(ended["data"]["reason"], "agent-terminated");
    let events = sink.events.lock().unwrap().clone();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "instance_terminated");
    assert_eq!(last["data"]["reason"], "agent-shutdown");
    assert!(!scratch_root.join(&k2).exists());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_previous_run_are_removed_at_start() {
    let config = test_config();
    let leftover = config.scratch_root.join("0b5e7a2c-1111-2222-3333-444455556666");
    std::fs::create_dir_all(leftover.join("sub")).unwrap();
    let agent = TestAgent::spawn_with(config).await;
    assert!(!leftover.exists());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bubblewrap_isolates_the_kernel_when_installed() {
    if !std::path::Path::new("/usr/bin/bwrap").exists() {
        eprintln!("skipped: bwrap is not installed");
        return;
    }
    let mut config = test_config();
    config.sandbox.use_bwrap = backendai_agent::config::BwrapMode::On;
    let agent = TestAgent::spawn_with(config).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (status, created) = agent
        .call(
            Method::POST,
            "/kernels",
            Some(json!({"kernel_id": id, "image": {"name": "python3", "runner": "python"}})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(created["runtime"]["sandbox"], "bwrap");
    let host_file = std::env::temp_dir().join(format!("bai-host-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&host_file, "host").unwrap();
    let code = format!(
        "import os, socket\n\
         print(os.path.exists({host:?}))\n\
         try:\n    open('/usr/bai-escape', 'w')\n    print('wrote')\nexcept OSError as e:\n    print('ro', e.errno)\n\
         s = socket.socket()\n\
         try:\n    s.connect(('127.0.0.1', {port}))\n    print('net')\nexcept OSError:\n    print('no net')\n\
         _ = open('inside.txt', 'w').write('ok')",
        host = host_file.to_str().unwrap(),
        port = agent.addr.port()
    );
    let results = run_until_done(&agent, &id, &code, Duration::from_secs(10)).await;
    assert_eq!(stream(&results, "stdout"), "False\nro 30\nno net\n", "{results:?}");
    assert!(agent.scratch_root.join(&id).join("inside.txt").exists());
    std::fs::remove_file(&host_file).unwrap();
    agent.stop().await;
}

/// Inside bubblewrap the kernel's root is a minimal tree: the system directories and a
/// few files of /etc; nothing else of the host exists there (not the directory the
/// manager keeps its database and config in, not /root, /home, /srv, /opt, /var, nor
/// /etc/shadow or the host's accounts), and the kernel's user has a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_root_holds_nothing_of_the_host_but_the_system() {
    if !std::path::Path::new("/usr/bin/bwrap").exists() {
        assert!(std::env::var("BACKENDAI_REQUIRE_SERVICES").is_err(), "bwrap is required");
        eprintln!("SKIPPED: bwrap is not installed");
        return;
    }
    let mut config = test_config();
    config.sandbox.use_bwrap = backendai_agent::config::BwrapMode::On;
    let agent = TestAgent::spawn_with(config).await;
    let k = agent.create("python", json!({})).await;
    // A secret where a manager keeps its data: next to the sources, not under /tmp or /home.
    let data_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bai-secret-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let secret = data_dir.join(format!("backend.ai-{}.db", uuid::Uuid::new_v4().simple()));
    std::fs::write(&secret, "secret keys").unwrap();
    let code = format!(
        "import os, pwd\n\
         print(sorted(os.listdir('/')))\n\
         print([p for p in [{secret:?}, {dir:?}, '/etc/shadow', '/etc/hostname', '/root', '/srv', '/opt', '/var/lib', '/run'] if os.path.exists(p)])\n\
         print(pwd.getpwuid(os.getuid()).pw_name, os.path.expanduser('~'), os.getcwd())\n\
         print(len(pwd.getpwall()) > 0 and all(p.pw_name in ('root', 'work', 'nobody') for p in pwd.getpwall()))",
        secret = secret.to_str().unwrap(),
        dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_str().unwrap(),
    );
    let results = run_until_done(&agent, &k, &code, Duration::from_secs(10)).await;
    let out = stream(&results, "stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{results:?}");
    let root: Vec<String> = serde_json::from_str(&lines[0].replace('\'', "\"")).unwrap();
    let allowed = ["bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "var"];
    assert!(root.iter().all(|entry| allowed.contains(&entry.as_str())), "{root:?}");
    assert_eq!(lines[1], "[]", "host paths visible inside the kernel");
    assert_eq!(lines[2], "work /home/work /home/work");
    assert_eq!(lines[3], "True", "only the sandbox's own accounts");
    std::fs::remove_file(&secret).unwrap();
    agent.stop().await;
}

/// Every kernel runs under a seccomp filter, with or without bubblewrap: calls a
/// code-execution sandbox never needs fail with EPERM (ENOSYS for clone3), and ordinary
/// work (threads, subprocesses, files) is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_denies_what_a_sandbox_never_needs() {
    let bwrap = std::path::Path::new("/usr/bin/bwrap").exists();
    let modes: &[backendai_agent::config::BwrapMode] = if bwrap {
        &[backendai_agent::config::BwrapMode::On, backendai_agent::config::BwrapMode::Off]
    } else {
        &[backendai_agent::config::BwrapMode::Off]
    };
    // x86_64 numbers: io_uring_setup, keyctl, add_key, bpf, perf_event_open, ptrace,
    // mount, unshare (CLONE_NEWUSER), setns, userfaultfd, init_module, reboot, clock_settime,
    // sethostname, clone3.
    let code = r#"import ctypes, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
calls = {'io_uring_setup': (425, 1, 0), 'keyctl': (250, 0, 0), 'add_key': (248, 0, 0), 'bpf': (321, 0, 0),
         'perf_event_open': (298, 0, 0), 'ptrace': (101, 16, 1), 'mount': (165, 0, 0),
         'unshare': (272, 0x10000000, 0), 'setns': (308, 0, 0), 'userfaultfd': (323, 0, 0),
         'init_module': (175, 0, 0), 'reboot': (169, 0, 0), 'clock_settime': (227, 0, 0),
         'sethostname': (170, 0, 0), 'clone3': (435, 0, 0)}
out = []
for name, (nr, a, b) in calls.items():
    ctypes.set_errno(0)
    rc = libc.syscall(nr, ctypes.c_long(a), ctypes.c_long(b), 0, 0, 0)
    out.append('%s=%s' % (name, os.strerror(ctypes.get_errno()) if rc < 0 else 'ALLOWED'))
print(' '.join(out).replace('Operation not permitted', 'EPERM').replace('Function not implemented', 'ENOSYS'))
t = threading.Thread(target=lambda: None); t.start(); t.join()
print(subprocess.run(['echo', 'sub'], capture_output=True, text=True).stdout.strip())"#;
    for mode in modes {
        let mut config = test_config();
        config.sandbox.use_bwrap = *mode;
        let agent = TestAgent::spawn_with(config).await;
        let k = agent.create("python", json!({})).await;
        let results = run_until_done(&agent, &k, code, Duration::from_secs(20)).await;
        let out = stream(&results, "stdout");
        let mut lines = out.lines();
        let verdicts = lines.next().unwrap_or_default();
        assert!(verdicts.contains('='), "{mode:?}: {results:?}");
        for verdict in verdicts.split(' ') {
            let (name, result) = verdict.split_once('=').unwrap();
            let expected = if name == "clone3" { "ENOSYS" } else { "EPERM" };
            assert_eq!(result, expected, "{mode:?}: {name} in {verdicts}");
        }
        assert_eq!(lines.next(), Some("sub"), "{mode:?}: {results:?}");
        agent.stop().await;
    }
}

/// A kernel process left running under a kernel uid that no agent holds (its agent
/// died and it escaped the death signal) is killed when an agent starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_processes_no_agent_holds_are_killed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: kernel uids need root");
        return;
    }
    let mut config = test_config();
    let locks = tempfile::tempdir().unwrap();
    config.sandbox.kernel_uid_start = 310_000 + (std::process::id() % 1000) * 20;
    config.sandbox.kernel_uid_count = 10;
    config.sandbox.uid_lock_dir = locks.path().to_owned();
    let uid = config.sandbox.kernel_uid_start + 7;
    let mut orphan = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("600").uid(uid).gid(uid).spawn().unwrap()
    };
    assert!(orphan.try_wait().unwrap().is_none());
    let agent = TestAgent::spawn_with(config).await;
    let mut gone = false;
    for _ in 0..50 {
        if orphan.try_wait().unwrap().is_some() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the orphan under uid {uid} still runs");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bubblewrap_interrupts_and_deaths_work_the_same() {
    let (sink, mut config) = (EventSink::start().await, test_config());
    config.sandbox.use_bwrap = backendai_agent::config::BwrapMode::Off;
    config.event_addr = Some(sink.addr.to_string());
    config.continuation_secs = 0.5;
    let agent = TestAgent::spawn_with(config).await;
    let k = agent.create("python", json!({})).await;
    let first = agent.execute(&k, "spin", "query", "import time\nwhile True:\n    time.sleep(0.05)", Value::Null).await;
    assert_eq!(first["status"], "continued");
    agent.call(Method::POST, &format!("/kernels/{k}/interrupt"), None).await;
    let mut results = vec![first];
    while results.last().unwrap()["status"] == "continued" {
        results.push(agent.execute(&k, "spin", "query", "", Value::Null).await);
    }
    assert!(stream(&results, "stderr").contains("KeyboardInterrupt"));
    run_until_done(&agent, &k, "import os\nos.kill(os.getpid(), 9)", Duration::from_secs(5)).await;
    let event = sink
        .wait_for(Duration::from_secs(3), |e| is_event(e, "kernel_terminated", &k))
        .await
        .expect("kernel_terminated");
    assert_eq!(event["data"]["reason"], "killed");
    agent.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kernel_gets_its_own_memory_limit() {
    let agent = TestAgent::spawn().await;
    for mem in [300, 700] {
        let k = agent.create("python", json!({"mem_slot": mem})).await;
        let results = run_until_done(
            &agent,
            &k,
            "import resource, os\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20, os.environ['BACKENDAI_KERNEL_ID'] == os.path.basename(os.environ['HOME']) or os.environ['HOME'] == '/home/work')",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(stream(&results, "stdout"), format!("{mem} True\n"));
        let k = agent.create("shell", json!({"mem_slot": mem})).await;
        let results = run_until_done(&agent, &k, "ulimit -v; echo $BACKENDAI_KERNEL_ID", Duration::from_secs(5)).await;
        assert_eq!(stream(&results, "stdout"), format!("{}\n{k}\n", mem * 1024));
    }
    agent.stop().await;
}
