//! The official clients after 1.0 drive both deployments through their CLIs, as users
//! would: 1.5.1 (API v4, the last of the 1.x line) through sessions with folders and
//! environment, kernel files, every `vfolder` command (invitations between two keys
//! included) and the admin tables; 1.4.2 (API v2 paths and signing, JSON bodies in GET
//! and DELETE requests) through a smoke test. Their CLIs exit 0 on some failures: the
//! checks read their output.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::helpers::{add_user_key, skip, spawn_app, TestApp, BACKENDS};

/// The `backend.ai` of a venv with client `version`: `$variable`'s Python, else
/// `<repository>/<venv>` (`.ci/run` makes both venvs as API-v4.md part 12 says).
fn client(variable: &str, venv: &str, version: &str) -> Option<PathBuf> {
    let python = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(venv).join("bin/python"));
    let cli = python.with_file_name("backend.ai");
    let found = std::process::Command::new(&python)
        .args(["-c", "import ai.backend.client as c; print(c.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if found.as_deref() == Some(version) && cli.exists() {
        Some(cli)
    } else {
        skip(&format!("client {version} is not installed (.ci/run makes {venv} with backend.ai-client=={version})"));
        None
    }
}

pub fn client_1_5_1() -> Option<PathBuf> {
    client("BACKENDAI_SDK151_PYTHON", ".venv151", "1.5.1")
}

pub fn client_1_4_2() -> Option<PathBuf> {
    client("BACKENDAI_SDK142_PYTHON", ".venv142", "1.4.2")
}

/// Runs the CLI as `key` in `dir`, with `input` on its stdin; its stdout and stderr.
async fn cli(bin: &Path, app: &TestApp, dir: &Path, args: &[&str], input: &str) -> String {
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("BACKEND_ENDPOINT", &app.address)
        .env("BACKEND_ACCESS_KEY", &app.access_key)
        .env("BACKEND_SECRET_KEY", &app.secret_key)
        .env_remove("BACKEND_VFOLDER_MOUNTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("backend.ai {args:?} hung"))
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

macro_rules! expect {
    ($output:expr, $($needle:expr),+) => {{
        let output = $output;
        $(assert!(output.contains($needle), "expected {:?} in:\n{}", $needle, output);)+
        assert!(!output.contains("Traceback"), "the CLI crashed:\n{}", output);
        output
    }};
}

#[actix_web::test]
async fn client_1_5_1_runs_sessions_with_folders_and_files() {
    let Some(bin) = client_1_5_1() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        std::fs::write(dir.join("data.txt"), "folder data\n").unwrap();
        std::fs::write(dir.join("main.py"), "import os\nprint('batch says', os.environ.get('FOO'))\n").unwrap();
        let run = |args: &'static [&'static str]| cli(&bin, &app, dir, args, "");

        expect!(run(&["vfolder", "create", "vf1"]).await, "\"vf1\" is created");
        expect!(run(&["vfolder", "list"]).await, "vf1", "wd");
        expect!(run(&["vfolder", "upload", "vf1", "data.txt"]).await, "Done");
        expect!(run(&["vfolder", "mkdir", "vf1", "sub"]).await, "Done");
        expect!(run(&["vfolder", "ls", "vf1"]).await, "data.txt", "sub");
        expect!(run(&["vfolder", "info", "vf1"]).await, "Number of files: 2", "Permission: wd");
        let got = tempfile::tempdir().unwrap();
        expect!(cli(&bin, &app, got.path(), &["vfolder", "download", "vf1", "data.txt"], "").await, "Done");
        assert_eq!(std::fs::read_to_string(got.path().join("data.txt")).unwrap(), "folder data\n");

        let code = "import os; print('env', os.environ['FOO']); print(open('vf1/data.txt').read()); \
                    open('vf1/from-kernel.txt', 'w').write('k'); open('made.txt', 'w').write('made')";
        let args = ["run", "-t", "sess151", "-m", "vf1", "-e", "FOO=bar", "python3", "-c", code];
        expect!(cli(&bin, &app, dir, &args, "").await, "env bar", "folder data", "exit code = 0");
        expect!(run(&["run", "-t", "sess151", "python3", "-c", "print(2 * 21)"]).await, "Reusing session", "42");
        let args = ["run", "-t", "batch151", "-e", "FOO=batched", "python3", "main.py"];
        expect!(cli(&bin, &app, dir, &args, "").await, "batch says batched", "exit code = 0");
        expect!(run(&["ps"]).await, "sess151", "batch151", "RUNNING");
        expect!(run(&["info", "sess151"]).await, "Session ID: sess151", "Lang/runtime: python3:latest");
        expect!(run(&["info", "nosuchsession"]).await, "no such running compute session");
        expect!(run(&["logs", "sess151"]).await, "env bar");
        expect!(run(&["ls", "sess151"]).await, "made.txt", "vf1", "/home/work");
        let got = tempfile::tempdir().unwrap();
        expect!(cli(&bin, &app, got.path(), &["download", "sess151", "made.txt"], "").await, "Downloaded");
        assert_eq!(std::fs::read_to_string(got.path().join("made.txt")).unwrap(), "made");
        expect!(run(&["upload", "sess151", "data.txt"]).await, "Uploaded");
        expect!(run(&["ls", "sess151", "/home/work"]).await, "data.txt");
        expect!(run(&["vfolder", "ls", "vf1"]).await, "from-kernel.txt");
        expect!(run(&["vfolder", "delete", "vf1"]).await, "mounted by the running session");
        expect!(run(&["terminate", "sess151", "batch151"]).await, "Done");
        expect!(cli(&bin, &app, dir, &["vfolder", "rm", "vf1", "data.txt"], "y\n").await, "Done");
        expect!(cli(&bin, &app, dir, &["vfolder", "rm", "-r", "vf1", "sub"], "y\n").await, "Done");
        let left = expect!(run(&["vfolder", "ls", "vf1"]).await, "from-kernel.txt");
        assert!(!left.contains("data.txt") && !left.contains("sub"), "{left}");
        // A delete prints nothing when it works.
        let deleted = run(&["vfolder", "delete", "vf1"]).await;
        assert!(!deleted.contains('✘'), "{deleted}");
        expect!(run(&["vfolder", "list"]).await, "There is no virtual folders created yet.");
        app.stop().await;
    }
}

#[actix_web::test]
async fn client_1_5_1_shares_folders_and_reads_the_admin_tables() {
    let Some(bin) = client_1_5_1() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        let friend = add_user_key(&app, "friend@example.com").await;
        std::fs::write(dir.join("note.txt"), "shared note\n").unwrap();
        expect!(cli(&bin, &app, dir, &["vfolder", "create", "team"], "").await, "is created");
        expect!(cli(&bin, &app, dir, &["vfolder", "upload", "team", "note.txt"], "").await, "Done");
        let args = ["vfolder", "invite", "-p", "ro", "team", "friend@example.com"];
        expect!(cli(&bin, &app, dir, &args, "").await, "friend@example.com");
        let listed = cli(&bin, &friend, dir, &["vfolder", "invitations"], "1\na\n").await;
        expect!(listed, "[1] 7, ", "read-only", "now can access vfolder");
        expect!(cli(&bin, &friend, dir, &["vfolder", "invitations"], "").await, "No invitations.");
        // A second folder's invitation, rejected at the prompt.
        expect!(cli(&bin, &app, dir, &["vfolder", "create", "declined"], "").await, "is created");
        let args = ["vfolder", "invite", "declined", "friend@example.com"];
        expect!(cli(&bin, &app, dir, &args, "").await, "friend@example.com");
        let rejected = cli(&bin, &friend, dir, &["vfolder", "invitations"], "1\nr\n").await;
        expect!(rejected, "read-write", "is rejected");
        expect!(cli(&bin, &friend, dir, &["vfolder", "invitations"], "").await, "No invitations.");
        let list = expect!(cli(&bin, &friend, dir, &["vfolder", "list"], "").await, "team", "ro");
        assert!(!list.contains("declined"), "{list}");
        let got = tempfile::tempdir().unwrap();
        expect!(cli(&bin, &friend, got.path(), &["vfolder", "download", "team", "note.txt"], "").await, "Done");
        assert_eq!(std::fs::read_to_string(got.path().join("note.txt")).unwrap(), "shared note\n");
        // Read-only: the friend's upload is refused (as if the folder did not exist).
        let refused = cli(&bin, &friend, dir, &["vfolder", "upload", "team", "note.txt"], "").await;
        expect!(refused, "No such virtual folder");
        // The friend cannot delete it either.
        expect!(cli(&bin, &friend, dir, &["vfolder", "delete", "team"], "").await, "No such virtual folder");

        // The admin tables. User ids: numeric ones as Int!, others as String! (the CLI's choice).
        let admin = crate::helpers::add_key_of(&app, "12", true).await;
        expect!(cli(&bin, &admin, dir, &["admin", "keypairs", "-u", "12"], "").await, &admin.access_key);
        let args = ["admin", "keypairs", "-u", "friend@example.com"];
        expect!(cli(&bin, &admin, dir, &args, "").await, &friend.access_key);
        let args = ["admin", "keypairs", "add", "-u", "newbie@example.com", "-r", "500"];
        expect!(cli(&bin, &admin, dir, &args, "").await, "Access Key:", "Secret Key:");
        expect!(cli(&bin, &admin, dir, &["admin", "keypairs", "-u", "newbie@example.com"], "").await, "500");
        expect!(cli(&bin, &admin, dir, &["admin", "agents"], "").await, "ALIVE");
        let args = ["run", "-t", "adminsess", "python3", "-c", "print(1)"];
        expect!(cli(&bin, &admin, dir, &args, "").await, "exit code = 0");
        let args = ["admin", "sessions", "--status", "ALL"];
        expect!(cli(&bin, &admin, dir, &args, "").await, "adminsess", "RUNNING");
        expect!(cli(&bin, &admin, dir, &["admin", "session", "adminsess"], "").await, "Session ID: adminsess");
        expect!(cli(&bin, &admin, dir, &["terminate", "adminsess"], "").await, "Done");
        expect!(cli(&bin, &app, dir, &["admin", "vfolders"], "").await, "team");
        let deleted = cli(&bin, &app, dir, &["vfolder", "delete", "team"], "").await;
        assert!(!deleted.contains('✘'), "{deleted}");
        expect!(cli(&bin, &friend, dir, &["vfolder", "list"], "").await, "There is no virtual folders created yet.");
        app.stop().await;
    }
}

#[actix_web::test]
async fn client_1_4_2_signs_get_bodies_and_uses_folders_and_files() {
    let Some(bin) = client_1_4_2() else { return };
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        std::fs::write(dir.join("old.txt"), "from 1.4\n").unwrap();
        let run = |args: &'static [&'static str]| cli(&bin, &app, dir, args, "");
        expect!(run(&["vfolder", "create", "old1"]).await, "\"old1\" is created");
        expect!(run(&["vfolder", "upload", "old1", "old.txt"]).await, "Done");
        // `vfolder ls` sends its path as a JSON body in a GET, signed.
        expect!(run(&["vfolder", "ls", "old1"]).await, "old.txt");
        let code = "print(open('old1/old.txt').read()); open('o.txt', 'w').write('o')";
        expect!(
            cli(&bin, &app, dir, &["run", "-t", "s142", "-m", "old1", "python3", "-c", code], "").await,
            "from 1.4"
        );
        expect!(run(&["ls", "s142"]).await, "o.txt");
        // (Not `download`: client 1.4.2's synchronous download fails inside the client, on a
        // `stream_reader` its own Response does not have, before it reads the answer.)
        expect!(run(&["terminate", "s142"]).await, "Done");
        let deleted = run(&["vfolder", "delete", "old1"]).await;
        assert!(!deleted.contains('✘') && !deleted.contains("Traceback"), "{deleted}");
        expect!(run(&["vfolder", "list"]).await, "There is no virtual folders created yet.");
        app.stop().await;
    }
}

#[actix_web::test]
async fn client_1_5_1_opens_a_signed_terminal_on_the_unprefixed_route() {
    let Some(bin) = client_1_5_1() else { return };
    let python = bin.with_file_name("python");
    for backend in BACKENDS {
        let Some(app) = spawn_app(backend).await else { continue };
        app.wait_for_agent().await;
        let output = crate::sdk::run_script(&python, "pty151.py", &app.address, &app.access_key, &app.secret_key).await;
        assert!(output.contains("OK pty151"), "{output}");
        app.stop().await;
    }
}
