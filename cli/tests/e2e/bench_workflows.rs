//! `tributary bench workflows`, short: an hour of minute schedules on the
//! fake clock in both modes, every fire time run once, and one takeover
//! under short jobs with nothing doubled, lost or left unfinished; the
//! bench removes its stack.

use std::process::Command;

use crate::common::*;

#[test]
fn bench_workflows_runs_every_fire_time_once_and_survives_a_takeover() {
    let env = Env::stack_blocking();
    let tmp = env.dir.path();
    let out = Command::new(bin())
        .args([
            "bench",
            "workflows",
            "--jobs",
            "2",
            "--hours",
            "1",
            "--short-jobs",
            "5",
            "--kills",
            "1",
        ])
        .env("TMPDIR", tmp)
        .env_remove("TRIBUTARY_CONFIG")
        .current_dir(tmp)
        .output()
        .unwrap();
    assert_success(&out, "bench workflows");
    let text = String::from_utf8_lossy(&out.stdout);
    // Both modes ran the hour's 60 fire times of both jobs, none missing
    // or doubled.
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tributary (wakes") || l.contains("polling reference  "))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        let n = cells.len();
        // ... runs missing doubled p50 p99 max
        assert_eq!(&cells[n - 6..n - 3], ["120", "0", "0"], "{row}");
    }
    assert!(text.contains("kill 1: new lease after"), "{text}");
    assert!(
        text.contains("run twice 0, fire times without a run 0, unfinished 0"),
        "{text}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tributary-bench-workflows-"))
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}
