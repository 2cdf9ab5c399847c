//! The real `einhyrningsinsctl` binary against a fake master: a unix listener in
//! a thread that records the exact request lines it receives and answers with
//! scripted reply lines. Synchronisation is on the socket only (the fake master
//! reads until the client hangs up), never on sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::support::*;

/// Where the fake master listens, in the test's temp dir.
fn sock(dir: &TempDir) -> PathBuf {
    dir.join("einhorn.sock")
}

/// One request the fake master waits for, and the lines it answers with.
struct Exchange {
    replies: Vec<String>,
}

/// What the fake master does after a connection's last exchange.
#[derive(Clone, Copy)]
enum Then {
    /// Keep the connection open until the client hangs up.
    WaitEof,
    /// Hang up at once (the master "goes away").
    Close,
}

fn ex(replies: &[&str]) -> Exchange {
    Exchange {
        replies: replies.iter().map(|r| r.to_string()).collect(),
    }
}

/// Serves one scripted conversation per connection, in order, and returns
/// every request line received (per connection, newline included).
fn fake_master(
    listener: UnixListener,
    conns: Vec<(Vec<Exchange>, Then)>,
) -> JoinHandle<Vec<Vec<String>>> {
    thread::spawn(move || {
        let mut seen = Vec::new();
        for (exchanges, then) in conns {
            let (stream, _) = listener.accept().expect("accept");
            let mut writer = stream.try_clone().expect("clone stream");
            let mut reader = BufReader::new(stream);
            let mut lines = Vec::new();
            for exchange in exchanges {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read request") == 0 {
                    break;
                }
                lines.push(line);
                for reply in &exchange.replies {
                    // The client may legitimately hang up mid-reply (e.g. on
                    // an over-long line); that is its business.
                    if writer.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            }
            if let Then::WaitEof = then {
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                if !rest.is_empty() {
                    lines.push(String::from_utf8_lossy(&rest).into_owned());
                }
            }
            seen.push(lines);
        }
        seen
    })
}

fn ctl_cmd(dir: &TempDir) -> Proc {
    Proc::new(CTL)
        .env_remove("EINHORN_SOCK_PATH")
        .env("USER", "tester")
        .env("HOME", dir.path())
}

fn run(dir: &TempDir, args: &[&str]) -> Output {
    ctl_cmd(dir)
        .arg("-d")
        .arg(sock(dir))
        .args(args)
        .output()
        .expect("run einhyrningsinsctl")
}

fn run_script(dir: &TempDir, script: &str) -> Output {
    let mut ctl = ctl_cmd(dir)
        .arg("-d")
        .arg(sock(dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn einhyrningsinsctl");
    // Without a master the ctl exits before reading: a broken pipe is fine.
    let _ = ctl
        .child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut so = ctl.child.stdout.take().expect("stdout");
    let mut se = ctl.child.stderr.take().expect("stderr");
    let reader = thread::spawn(move || {
        se.read_to_end(&mut err).expect("read stderr");
        err
    });
    so.read_to_end(&mut out).expect("read stdout");
    let err = reader.join().expect("stderr reader");
    let status = ctl.child.wait().expect("wait einhyrningsinsctl");
    Output {
        status,
        stdout: out,
        stderr: err,
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn bind(dir: &TempDir) -> UnixListener {
    UnixListener::bind(sock(dir)).expect("bind fake master")
}

#[test]
fn one_shot_success_prints_the_message_and_exits_0() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&[
                "{\"message\":\"Incremented to 3\",\"request_id\":1}\n",
            ])],
            Then::WaitEof,
        )],
    );
    let out = run(&dir, &["-e", "inc", "2"]);
    let seen = master.join().expect("fake master");
    assert_eq!(
        seen,
        vec![vec![
            "{\"command\":\"inc\",\"args\":[\"2\"],\"id\":1}\n".to_string()
        ]]
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "Incremented to 3\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn positional_words_and_pool_flag() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&["{\"message\":\"web: 4 workers\",\"request_id\":1}\n"])],
            Then::WaitEof,
        )],
    );
    let out = run(&dir, &["set_workers", "4", "--pool", "web"]);
    let seen = master.join().expect("fake master");
    assert_eq!(
        seen,
        vec![vec![
            "{\"command\":\"set_workers\",\"args\":[\"4\"],\"id\":1,\"pool\":\"web\"}\n"
                .to_string()
        ]]
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "web: 4 workers\n");
}

#[test]
fn multi_line_status_table_is_printed_as_is() {
    let dir = TempDir::for_test();
    let table = "POOL  PID   STATE\\nweb   4242  acked\\n";
    let reply = format!("{{\"message\":\"{table}\",\"request_id\":1}}\n");
    let master = fake_master(bind(&dir), vec![(vec![ex(&[&reply])], Then::WaitEof)]);
    let out = run(&dir, &["status"]);
    let seen = master.join().expect("fake master");
    assert_eq!(
        seen,
        vec![vec![
            "{\"command\":\"status\",\"args\":[],\"id\":1}\n".to_string()
        ]]
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "POOL  PID   STATE\nweb   4242  acked\n");
}

#[test]
fn error_reply_exits_1_with_the_message_on_stderr() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&["{\"message\":\"several pools: say which with --pool\",\"request_id\":1,\"error\":true}\n"])],
            Then::WaitEof,
        )],
    );
    let out = run(&dir, &["inc"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("several pools: say which with --pool"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn streamed_replies_are_printed_as_they_arrive() {
    // The master holds back the final reply until the client has printed the
    // first progress line: only a client that streams can pass.
    let dir = TempDir::for_test();
    let listener = bind(&dir);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let master = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        reader.read_line(&mut request).expect("read request");
        writer
            .write_all(b"{\"message\":\"Upgrading smoothly\",\"request_id\":1,\"wait\":true}\n")
            .expect("write");
        writer
            .write_all(
                b"{\"message\":\"web: 1/2 new workers acked\",\"request_id\":1,\"wait\":true}\n",
            )
            .expect("write");
        go_rx.recv().expect("go");
        writer
            .write_all(b"{\"message\":\"Upgrade done\",\"request_id\":1}\n")
            .expect("write");
        let _ = reader.read_to_end(&mut Vec::new());
        request
    });
    let mut ctl = ctl_cmd(&dir)
        .arg("-d")
        .arg(sock(&dir))
        .arg("upgrade")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(ctl.child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    assert_eq!(first, "Upgrading smoothly\n");
    let mut second = String::new();
    out.read_line(&mut second).expect("second line");
    assert_eq!(second, "web: 1/2 new workers acked\n");
    go_tx.send(()).expect("go");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest");
    assert_eq!(rest, "Upgrade done\n");
    assert_eq!(ctl.child.wait().expect("wait").code(), Some(0));
    assert_eq!(
        master.join().expect("fake master"),
        "{\"command\":\"upgrade\",\"args\":[],\"id\":1}\n"
    );
}

#[test]
fn json_prints_raw_reply_lines() {
    let dir = TempDir::for_test();
    let lines = [
        "{\"message\":\"step\",\"request_id\":1,\"wait\":true}\n",
        "{\"message\":\"done\",\"request_id\":1}\n",
    ];
    let master = fake_master(bind(&dir), vec![(vec![ex(&lines)], Then::WaitEof)]);
    let out = run(&dir, &["--json", "-e", "upgrade_fleet", "--pool", "api"]);
    let seen = master.join().expect("fake master");
    assert_eq!(
        seen,
        vec![vec![
            "{\"command\":\"upgrade_fleet\",\"args\":[],\"id\":1,\"pool\":\"api\"}\n".to_string()
        ]]
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), lines.concat());
}

#[test]
fn replies_for_another_request_id_are_ignored() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&[
                "{\"message\":\"stale\",\"request_id\":99}\n",
                "{\"message\":\"stale error\",\"request_id\":7,\"error\":true}\n",
                "{\"message\":\"version 0.1.0\",\"request_id\":1}\n",
            ])],
            Then::WaitEof,
        )],
    );
    let out = run(&dir, &["version"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "version 0.1.0\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn no_master_listening_exits_3_naming_the_path() {
    let dir = TempDir::for_test();
    // A socket file nobody listens on any more: what a crashed master leaves.
    drop(bind(&dir));
    let out = run(&dir, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let expected = format!(
        "no master is listening on {}: connection refused (is einhyrningsins running? -d sets the path)",
        sock(&dir).display()
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
}

#[test]
fn missing_socket_file_exits_3_and_says_so() {
    let dir = TempDir::for_test();
    let out = run(&dir, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains(&sock(&dir).display().to_string()), "{err}");
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn socket_path_comes_from_einhorn_sock_path_without_d() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&["{\"message\":\"pong\",\"request_id\":1}\n"])],
            Then::WaitEof,
        )],
    );
    let out = ctl_cmd(&dir)
        .env("EINHORN_SOCK_PATH", sock(&dir))
        .arg("ehlo")
        .output()
        .expect("run");
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "pong\n");
}

#[test]
fn master_going_away_mid_command_exits_1() {
    let dir = TempDir::for_test();
    let master = fake_master(bind(&dir), vec![(vec![ex(&[])], Then::Close)]);
    let out = run(&dir, &["upgrade"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("master went away"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn master_hanging_up_before_reading_is_not_a_panic() {
    // Either the write hits EPIPE or the read sees the hang-up: both must end
    // in the "went away" message, never in a panic or a SIGPIPE death.
    let dir = TempDir::for_test();
    let master = fake_master(bind(&dir), vec![(vec![], Then::Close)]);
    let out = run(&dir, &["status"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("master went away"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn no_final_reply_within_timeout_exits_4() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&[
                "{\"message\":\"Upgrading\",\"request_id\":1,\"wait\":true}\n",
            ])],
            Then::WaitEof,
        )],
    );
    let out = run(&dir, &["--timeout", "300ms", "upgrade"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stdout(&out), "Upgrading\n");
    assert!(
        stderr(&out).contains("timed out after 300ms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn reply_that_is_not_json_exits_1() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![ex(&["---%0Amessage: hi%0Arequest_id: 1%0A\n"])],
            Then::WaitEof,
        )],
    );
    let out = run(&dir, &["status"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a JSON object"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("---%0Amessage"), "{}", stderr(&out));
}

#[test]
fn reply_line_over_16_mib_exits_1() {
    let dir = TempDir::for_test();
    let huge = format!("{{\"message\":\"{}", "x".repeat(16 * 1024 * 1024 + 1));
    let master = fake_master(bind(&dir), vec![(vec![ex(&[&huge])], Then::WaitEof)]);
    let out = run(&dir, &["state"]);
    master.join().expect("fake master");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("longer than 16 MiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::for_test();
    assert_eq!(run(&dir, &["-e", ""]).status.code(), Some(2));
    assert_eq!(
        run(&dir, &["--timeout", "soon", "status"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&dir, &["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn script_mode_runs_stdin_lines_after_ehlo() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![(
            vec![
                ex(&["{\"message\":\"Welcome, tester\",\"request_id\":1}\n"]),
                ex(&["{\"message\":\"POOL web\",\"request_id\":2}\n"]),
                // `pool web` checks that the master has a pool web.
                ex(&["{\"message\":\"{\\\"pools\\\":{\\\"web\\\":{}}}\",\"request_id\":3}\n"]),
                ex(&[
                    "{\"message\":\"upgrading\",\"request_id\":4,\"wait\":true}\n",
                    "{\"message\":\"done\",\"request_id\":4}\n",
                ]),
            ],
            Then::WaitEof,
        )],
    );
    let out = run_script(
        &dir,
        "# deploy\nstatus\n\npool web\nupgrade 'a b'  # roll\n",
    );
    let seen = master.join().expect("fake master");
    assert_eq!(
        seen,
        vec![vec![
            "{\"command\":\"ehlo\",\"args\":[],\"id\":1,\"user\":\"tester\"}\n".to_string(),
            "{\"command\":\"status\",\"args\":[],\"id\":2}\n".to_string(),
            "{\"command\":\"state\",\"args\":[],\"id\":3}\n".to_string(),
            "{\"command\":\"upgrade\",\"args\":[\"a b\"],\"id\":4,\"pool\":\"web\"}\n".to_string(),
        ]]
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    // No prompt and no greeting: only what the script's commands printed.
    assert_eq!(stdout(&out), "POOL web\nupgrading\ndone\n");
}

#[test]
fn script_mode_reports_a_vanished_master_and_reconnects() {
    let dir = TempDir::for_test();
    let master = fake_master(
        bind(&dir),
        vec![
            (
                vec![ex(&["{\"message\":\"hi\",\"request_id\":1}\n"]), ex(&[])],
                Then::Close,
            ),
            (
                vec![
                    ex(&["{\"message\":\"hi again\",\"request_id\":3}\n"]),
                    ex(&["{\"message\":\"0.1.0\",\"request_id\":4}\n"]),
                ],
                Then::WaitEof,
            ),
        ],
    );
    let out = run_script(&dir, "die\nversion\n");
    let seen = master.join().expect("fake master");
    assert_eq!(
        seen,
        vec![
            vec![
                "{\"command\":\"ehlo\",\"args\":[],\"id\":1,\"user\":\"tester\"}\n".to_string(),
                "{\"command\":\"die\",\"args\":[],\"id\":2}\n".to_string(),
            ],
            vec![
                "{\"command\":\"ehlo\",\"args\":[],\"id\":3,\"user\":\"tester\"}\n".to_string(),
                "{\"command\":\"version\",\"args\":[],\"id\":4}\n".to_string(),
            ],
        ]
    );
    assert!(
        stderr(&out).contains("master went away"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "0.1.0\n");
    // The first failed command decides the status.
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn script_mode_without_master_exits_3() {
    let dir = TempDir::for_test();
    let out = run_script(&dir, "status\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no control socket at"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn script_mode_without_master_exits_3_even_if_no_line_reaches_it() {
    let dir = TempDir::for_test();
    for script in ["pool web\n", "", "# nothing\n"] {
        let out = run_script(&dir, script);
        assert_eq!(out.status.code(), Some(3), "{script:?}: {out:?}");
        assert!(
            stderr(&out).contains("no control socket"),
            "{}",
            stderr(&out)
        );
    }
}
