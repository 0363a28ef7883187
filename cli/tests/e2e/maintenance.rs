//! Lake maintenance beside live writers, end to end: the ingester keeps a
//! short maintenance cadence of its own while `tributary lake optimize`
//! runs in a loop from another process, under load; the lake still equals
//! the source and silver ends with few files.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;

async fn silver_files(env: &Env, table: &str) -> usize {
    let lake = tributary_lake::Lake::new(&env.lake_config()).unwrap();
    let t = lake
        .open("silver", table)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no table silver.{table}"));
    tributary_lake::maintenance::file_stats(&t, table)
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_beside_live_ingest_keeps_the_lake_equal_to_the_source() {
    let mut env = Env::stack().await;
    for (k, v) in [
        ("OPTIMIZE_EVERY_COMMITS", "5"),
        ("CHECKPOINT_EVERY_COMMITS", "7"),
        ("TARGET_FILE_SIZE", "4194304"),
        // Vacuum is exercised by hand at the end, once nothing reads.
        ("VACUUM_INTERVAL_S", "0"),
    ] {
        env.extra
            .push((format!("TRIBUTARY__INGEST__MAINTENANCE__{k}"), v.into()));
    }
    env.start().await;
    env.start_pipeline();
    let mut load = env.spawn_load(40, 25, 5);

    // Compaction by hand, in a loop, beside the ingester's own.
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let stop = stop.clone();
        let mut cmd = env.command(&["lake", "optimize", "--layer", "all"]);
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let out = cmd.output().unwrap();
                runs.push(out);
                std::thread::sleep(Duration::from_millis(300));
            }
            runs
        })
    };
    let status = load.wait().unwrap();
    assert!(status.success(), "load failed");
    stop.store(true, Ordering::SeqCst);
    let runs = looper.join().unwrap();
    env.assert_running();
    assert!(runs.len() >= 3, "only {} optimize runs", runs.len());
    let mut compacted = 0;
    for out in &runs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "lake optimize failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        compacted += stdout
            .lines()
            .filter(|l| l.starts_with("silver.") && !l.contains(" removed 0 "))
            .count();
    }
    eprintln!(
        "{} optimize runs by hand, {compacted} silver compactions",
        runs.len()
    );

    assert_lake_equals_source(&env).await;
    let log = env.log("ingest");
    assert!(
        log.contains("table compacted") && log.contains("checkpoint written"),
        "the ingester kept no maintenance cadence:\n{}",
        tail(&log)
    );
    assert!(
        !log.contains("ingest of this table stopped"),
        "a maintenance race stopped ingest of a table:\n{}",
        tail(&log)
    );

    // Once ingest is idle, one more pass leaves silver with few files.
    env.run_ok(&["lake", "optimize", "--layer", "silver"]);
    for t in ["orders", "order_items", "customers"] {
        let n = silver_files(&env, t).await;
        assert!(n <= 2, "silver.{t} has {n} files after compaction");
    }

    // Vacuum: a retention below the minimum needs --force and says so.
    let out = env.run(&["lake", "vacuum", "--retention-hours", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--force"), "{err}");
    let out = env.run(&[
        "lake",
        "vacuum",
        "orders",
        "--layer",
        "silver",
        "--retention-hours",
        "0",
        "--force",
        "--dry-run",
    ]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("would delete"),
        "{listed}"
    );
    env.run_ok(&["lake", "vacuum", "--retention-hours", "0", "--force"]);
    env.run_ok(&["lake", "checkpoint", "--layer", "silver"]);
    // A missing table is named.
    let out = env.run(&["lake", "optimize", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"nope\""), "{err}");
    // Still equal after vacuum deleted every replaced file.
    assert_lake_equals_source(&env).await;
}
