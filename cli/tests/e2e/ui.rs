//! The web console (`tributary ui`) in a real browser: Debian's headless
//! Chromium driven by Playwright (`ui/tests/browser.cjs`), against the
//! console `tributary up` starts on a stack with orders flowing through
//! the pipeline and alerts arriving on the alerts topic.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Produces an alert to the alerts topic every half second until `stop`,
/// each with a new id under `prefix` (the page follows from "now", so
/// some arrive after it opened, whenever that is).
fn produce_alerts(env: &Env, prefix: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let kafka = env.kafka();
    let topic = tributary_live::fraud::alerts_topic(&kafka.topic_prefix);
    std::thread::spawn(move || {
        let producer: BaseProducer = tributary_kafka::client_config(&kafka)
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let now_us = chrono::Utc::now().timestamp_micros();
            let alert = serde_json::json!({
                "id": format!("{prefix}{n}"),
                "rule": "velocity",
                "customer_id": 7,
                "window_start_us": now_us - 60_000_000,
                "window_end_us": now_us,
                "order_id": n,
                "detail": "<b>not markup</b> 6 orders in 60 s",
                "source_commit_us": now_us,
                "detected_at_us": now_us,
            });
            let payload = alert.to_string();
            let key = format!("{n}");
            let _ = producer.send(BaseRecord::to(&topic).key(&key).payload(&payload));
            producer.poll(Duration::from_millis(0));
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = producer.flush(Duration::from_secs(5));
    })
}

/// An alert in `gold.fraud_alerts` about a real order, written as the
/// detector writes its alerts: the evidence page must find that order in
/// the alert's window. Returns (alert id, order id).
async fn alert_in_the_lake(env: &Env) -> (String, i64) {
    use tributary_live::fraud::alert::Alert;
    use tributary_live::fraud::rules::RuleName;
    use tributary_live::fraud::{TABLE, table};
    let session = env.session().await;
    let batches = session
        .sql(
            "SELECT id, customer_id, CAST(created_at AS BIGINT) AS at_us \
             FROM silver.orders ORDER BY id LIMIT 1",
        )
        .await
        .unwrap();
    let column = |i: usize| {
        let a =
            arrow::compute::cast(batches[0].column(i), &arrow::datatypes::DataType::Int64).unwrap();
        a.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    let (order, customer, at_us) = (column(0), column(1), column(2));
    let window_end_us = at_us + 1_000_000;
    let alert = Alert {
        id: Alert::id_of(RuleName::Velocity, customer, window_end_us),
        rule: RuleName::Velocity,
        customer_id: customer,
        window_start_us: at_us - 60_000_000,
        window_end_us,
        order_id: Some(order),
        detail: "1 order in 61 s (written by e2e::ui)".into(),
        source_commit_us: at_us,
        detected_at_us: at_us,
    };
    let lake = tributary_lake::Lake::new(&env.lake_config()).unwrap();
    tributary_live::sink::delta::DeltaOutput::for_job(
        &lake,
        "e2e-ui",
        TABLE,
        table::SCHEMA.clone(),
    )
    .commit(1, vec![table::rows(std::slice::from_ref(&alert)).unwrap()])
    .await
    .unwrap();
    (alert.id, order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_console_works_in_a_browser() {
    let mut env = Env::stack().await;
    let port = free_port();
    let jobs = repo().join("workflows/jobs");
    env.extra.extend([
        ("TRIBUTARY__UI__ENABLED".into(), "true".into()),
        ("TRIBUTARY__UI__LISTEN".into(), format!("127.0.0.1:{port}")),
        // The jobs on the Workflows page, but no scheduler running them:
        // a triggered run stays queued, which the page shows.
        ("TRIBUTARY__STACK__SCHEDULER".into(), "false".into()),
        ("TRIBUTARY__STACK__JOBS".into(), jobs.display().to_string()),
    ]);
    env.start().await;
    env.start_pipeline();
    env.load(20, 4, 11);
    env.run_ok(&["wait", "--timeout", "120s"]);
    // A second load: silver.orders gets more than one version to preview.
    env.load(20, 2, 12);
    env.run_ok(&["wait", "--timeout", "120s"]);

    // `up` started the console with a password of its own, and `status`
    // says where and how to log in.
    let password_file = env.state_dir().join("ui/password");
    let password = std::fs::read_to_string(&password_file)
        .unwrap_or_else(|e| panic!("{}: {e}", password_file.display()));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&password_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the password file is readable by others");
    let status = env.run_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("web console"))
        .unwrap_or_else(|| panic!("no web console in status:\n{status}"));
    assert!(
        line.contains("healthy") && line.contains(&format!("127.0.0.1:{port}")),
        "{line}"
    );
    assert!(
        !status.contains(password.trim()),
        "status shows the password"
    );

    let (evidence_alert, evidence_order) = alert_in_the_lake(&env).await;
    let prefix = format!("e2e-ui-{}/", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_alerts(&env, prefix.clone(), stop.clone());
    // Orders keep arriving while the browser looks (the pipeline page's
    // charts must move).
    let mut load = env.spawn_load(10, 90, 13);
    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let home = std::env::var("HOME").unwrap_or_default();
    let out = tokio::task::spawn_blocking({
        let script = repo().join("ui/tests/browser.cjs");
        let url = format!("http://127.0.0.1:{port}");
        let password = password.trim().to_string();
        move || {
            Command::new("node")
                .arg(script)
                .env("UI_URL", url)
                .env("UI_USER", "tributary")
                .env("UI_PASSWORD", password)
                .env("UI_ALERT_PREFIX", prefix)
                .env("UI_EVIDENCE_ALERT", evidence_alert)
                .env("UI_EVIDENCE_ORDER", evidence_order.to_string())
                .env("UI_SCREENSHOTS", screenshots)
                .env(
                    "NODE_PATH",
                    format!("{home}/.cache/tributary/node/node_modules"),
                )
                .output()
                .expect("node runs (scripts/bootstrap.sh installs it)")
        }
    })
    .await
    .unwrap();
    let _ = load.kill();
    let _ = load.wait();
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ui_log = std::fs::read_to_string(env.state_dir().join("ui/ui.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the browser checks failed:\n{stdout}\n{stderr}\n--- ui.log\n{}",
        tail(&ui_log)
    );
    // Page load times, for docs/ui.md (measured, not asserted).
    for line in stdout.lines().filter(|l| l.starts_with("load ")) {
        eprintln!("{line}");
    }
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 26, "only {passed} checks ran:\n{stdout}");
    assert!(
        !ui_log.contains(password.trim()),
        "the console's log shows the password"
    );
}
