//! The interactive SQL console (`tributary sql`) as a user types into it:
//! history kept across sessions, under a terminal, and `\o` sending results
//! to CSV and JSON files. The console needs a lake, not a stack: these tests
//! take no stack turn.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// `tributary sql` under a pseudo-terminal (util-linux `script`), so the
/// console runs its line editor as for a user at a terminal.
struct Terminal {
    child: Child,
    stdin: ChildStdin,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn open(env: &Env) -> Terminal {
        let mut command = Command::new("script");
        command
            .args(["--quiet", "--return", "--command"])
            .arg(format!("'{}' sql", bin()))
            .arg("/dev/null")
            .envs(env.vars())
            // A terminal the editor knows, so arrow keys recall history.
            .env("TERM", "xterm")
            .current_dir(env.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("util-linux `script` runs: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut t = Terminal {
            child,
            stdin,
            screen,
        };
        t.wait_for("tributary> ", 1);
        t
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until `text` has appeared `times` times on the screen.
    fn wait_for(&mut self, text: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.screen().matches(text).count() < times {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the console exited ({status}):\n{}", self.screen());
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} did not appear {times} times:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `keys`, then waits until `answer` appears once more.
    fn type_keys(&mut self, keys: &str, answer: &str) {
        let seen = self.screen().matches(answer).count();
        self.stdin.write_all(keys.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        self.wait_for(answer, seen + 1);
    }

    /// Ctrl-D at an empty prompt: the console ends.
    fn close(mut self) -> String {
        self.stdin.write_all(b"\x04").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the console failed:\n{}", self.screen());
                return self.screen();
            }
            assert!(
                Instant::now() < deadline,
                "the console did not end on Ctrl-D:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn console_history_is_kept_across_sessions() {
    let env = Env::new();
    let history = env.state_dir().join("sql_history");
    let mut first = Terminal::open(&env);
    first.type_keys("SELECT 40 + 2 AS first_session;\r", "| 42 ");
    let screen = first.close();
    assert!(screen.contains("first_session"), "{screen}");
    let saved = std::fs::read_to_string(&history).unwrap_or_default();
    assert!(
        saved.contains("SELECT 40 + 2 AS first_session;"),
        "the first session's statement is not in {}: {saved:?}",
        history.display()
    );

    // A new session: the up arrow brings back the last session's statement,
    // and Enter runs it again.
    let mut second = Terminal::open(&env);
    second.type_keys("\x1b[A\r", "| 42 ");
    second.type_keys("SELECT 'b' AS second_session;\r", "| b ");
    let screen = second.close();
    assert!(screen.contains("| first_session |"), "{screen}");
    // Both sessions' statements are kept, oldest first.
    let saved = std::fs::read_to_string(&history).unwrap();
    let first_at = saved.find("first_session").unwrap();
    let second_at = saved
        .find("SELECT 'b' AS second_session;")
        .unwrap_or_else(|| panic!("the second session's statement is not kept: {saved:?}"));
    assert!(first_at < second_at, "{saved:?}");
}

#[test]
fn console_o_writes_results_to_csv_and_json_files() {
    let env = Env::new();
    let query = "SELECT 1 AS n, 'a,b' AS s UNION ALL SELECT 2, NULL ORDER BY n;";
    let mut child = env
        .command(&["sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "\\o out.csv\n{query}\n\\o out.json\n{query}\n\\o\nSELECT 'on the terminal' AS back;\n\\q\n"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "tributary sql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for said in [
        "Results go to out.csv as csv.",
        "wrote 2 rows to out.csv (csv)",
        "Results go to out.json as json.",
        "wrote 2 rows to out.json (json)",
        "Results go to the terminal.",
        "on the terminal",
    ] {
        assert!(stdout.contains(said), "{said:?} missing:\n{stdout}");
    }
    // The results went to the files, not the terminal.
    assert!(!stdout.contains("a,b"), "{stdout}");
    let csv = std::fs::read_to_string(env.dir.path().join("out.csv")).unwrap();
    assert_eq!(csv, "n,s\n1,\"a,b\"\n2,\n");
    let json = std::fs::read_to_string(env.dir.path().join("out.json")).unwrap();
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"n": 1, "s": "a,b"}),
            serde_json::json!({"n": 2, "s": null}),
        ]
    );
}
