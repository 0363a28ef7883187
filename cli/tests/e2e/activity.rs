//! Live product activity on the real stack: the windows the stream job
//! closes equal the same figures computed in batch from the lake, and the
//! clickstream's views and add-to-carts are each counted once, across a
//! SIGKILL of the job.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use serde_json::json;

use crate::common::*;

/// (product, window start µs) -> (orders, units, revenue cents).
type Windows = BTreeMap<(i64, i64), (i64, i64, i64)>;

/// Runs `sql`, whose columns are product, window start (µs), then three
/// integers; `None` while a table does not exist yet.
async fn windows(env: &Env, sql: &str) -> Option<Windows> {
    let batches = env.session().await.sql(sql).await.ok()?;
    let mut out = Windows::new();
    for b in &batches {
        let cols: Vec<_> = (0..5)
            .map(|i| arrow::compute::cast(b.column(i), &DataType::Int64).unwrap())
            .collect();
        let v = |c: usize, i: usize| cols[c].as_primitive::<Int64Type>().value(i);
        for i in 0..b.num_rows() {
            assert!(cols.iter().all(|c| !c.is_null(i)), "{sql}: a null");
            out.insert((v(0, i), v(1, i)), (v(2, i), v(3, i), v(4, i)));
        }
    }
    Some(out)
}

const STREAMED: &str = "SELECT product_id, CAST(to_unixtime(window_start) * 1000000 AS BIGINT), \
     orders, units, CAST(revenue * 100 AS BIGINT) FROM gold.product_activity_5m WHERE orders > 0";

/// The same windows in batch: order lines by their commit time, from silver
/// (the test never updates an order line, so silver's commit time is the
/// creation's).
const BATCH: &str = "SELECT product_id, \
     CAST(to_unixtime(date_bin(INTERVAL '10 seconds', _commit_ts, TIMESTAMP '1970-01-01T00:00:00Z')) * 1000000 AS BIGINT), \
     count(*), sum(quantity), CAST(sum(line_total) * 100 AS BIGINT) FROM silver.order_items GROUP BY 1, 2";

#[tokio::test]
async fn streamed_windows_equal_the_batch_figures_across_a_kill() {
    let mut env = Env::stack().await;
    env.extra.extend(
        [
            ("TRIBUTARY__CDC__STATUS_INTERVAL_MS", "200"),
            ("TRIBUTARY__LIVE__ENGINE__CHECKPOINT_INTERVAL_MS", "300"),
            ("TRIBUTARY__LIVE__ENGINE__IDLE_TIMEOUT_MS", "2000"),
            ("TRIBUTARY__LIVE__ACTIVITY__WINDOW_MS", "10000"),
            ("TRIBUTARY_LOG", "info,tributary_live=debug"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.start().await;
    env.start_pipeline();
    env.spawn("activity", &["activity", "run"]);
    let base = env.url();
    let c = reqwest::Client::new();
    let mut products = vec![];
    for (i, price) in [4.25, 19.99].iter().enumerate() {
        let p = post(
            &c,
            format!("{base}/products"),
            json!({"sku": format!("ACT-{i}"), "name": format!("Thing {i}"), "category": "tools", "price": price}),
        )
        .await;
        products.push(p["id"].as_i64().unwrap());
    }
    let customer = post(
        &c,
        format!("{base}/customers"),
        json!({"email": "act@example.com", "name": "Act", "region": "eu", "country": "DE",
               "city": "Berlin", "address": "Strasse 1", "lat": 52.5, "lon": 13.4}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let click = async |product: i64, what: &str| {
        let r = c
            .post(format!("{base}/products/{product}/{what}"))
            .json(&json!({"customer_id": customer, "device_id": "dev-1"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{what}: {}", r.status());
    };
    let order = async |lines: serde_json::Value| {
        post(
            &c,
            format!("{base}/orders"),
            json!({"customer_id": customer, "items": lines}),
        )
        .await;
    };
    for _ in 0..2 {
        click(products[0], "view").await;
    }
    for _ in 0..3 {
        click(products[1], "cart").await;
    }
    order(json!([{"product_id": products[0], "quantity": 2}, {"product_id": products[1], "quantity": 1}])).await;
    order(json!([{"product_id": products[1], "quantity": 3}])).await;
    // A kill mid-stream: nothing counted twice or lost.
    env.kill9("activity");
    for _ in 0..2 {
        click(products[1], "cart").await;
    }
    order(json!([{"product_id": products[0], "quantity": 1}])).await;
    env.spawn("activity", &["activity", "run"]);

    // By hand rather than `Env::until`: on a timeout the first lines say
    // what is missing, and the late path and the job's log come next.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (streamed, batch) = (windows(&env, STREAMED).await, windows(&env, BATCH).await);
        let lines: i64 = batch.iter().flat_map(|b| b.values()).map(|v| v.0).sum();
        let missing: Vec<_> = match (&streamed, &batch) {
            (Some(s), Some(b)) => b.keys().filter(|k| !s.contains_key(k)).collect(),
            _ => vec![],
        };
        if streamed.is_some() && lines == 4 && missing.is_empty() {
            break;
        }
        env.assert_running();
        if std::time::Instant::now() > deadline {
            let late = env
                .session()
                .await
                .sql("SELECT topic, partition, \"offset\", event_time, watermark, reason FROM gold.live_late_events")
                .await
                .map(|b| arrow::util::pretty::pretty_format_batches(&b).unwrap().to_string());
            panic!(
                "the streamed windows did not cover the batch ones within 180 s: \
                 {lines} of 4 order lines in silver, streamed table {}, \
                 batch windows missing from it: {missing:?}\nlate events: {late:?}\n{}",
                if streamed.is_some() {
                    "present"
                } else {
                    "absent"
                },
                env.logs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let streamed = windows(&env, STREAMED).await.unwrap();
    let batch = windows(&env, BATCH).await.unwrap();
    assert_eq!(streamed, batch, "streamed windows == batch windows");
    let session = env.session().await;
    let clicks = session
        .sql(&format!(
            "SELECT product_id, sum(views), sum(add_to_carts) FROM gold.product_activity_5m \
             WHERE product_id IN ({}, {}) GROUP BY 1 ORDER BY 1",
            products[0], products[1]
        ))
        .await
        .unwrap();
    let b = arrow::compute::concat_batches(&clicks[0].schema(), &clicks).unwrap();
    let col = |i: usize| {
        arrow::compute::cast(b.column(i), &DataType::Int64)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    };
    assert_eq!(col(0), products, "both products have windows");
    assert_eq!(col(1), vec![2, 0], "views, once each");
    assert_eq!(col(2), vec![0, 5], "add-to-carts, once each");
    let distinct = tributary_query_count(
        &session
            .sql(
                "SELECT count(*) FROM (SELECT DISTINCT product_id, window_start \
                 FROM gold.product_activity_5m)",
            )
            .await
            .unwrap(),
    );
    let rows = tributary_query_count(
        &session
            .sql("SELECT count(*) FROM gold.product_activity_5m")
            .await
            .unwrap(),
    );
    assert_eq!(rows, distinct, "each (product, window) written once");
    env.assert_running();
    watermarks_reach_a_caller_that_cancels_every_call(&env).await;
}

/// The stream driver under a caller whose `select!` drops every `next` after
/// a millisecond, far less than reading a topic's end offsets takes: the CDC
/// watermarks of every shard still get filed. (The job's own loop drops
/// `next` at each 50 ms tick; when the read took longer than that, it was
/// started again on every call, never finished, and the job's time stopped,
/// which made this test fail now and then before the driver kept the read.)
async fn watermarks_reach_a_caller_that_cancels_every_call(env: &Env) {
    use tributary_stream::source::Driver;
    use tributary_stream::watermark::{WatermarkConfig, WatermarkTracker};
    let kafka = env.kafka();
    let shards = env.config().stack.shards as u32;
    let mut tracker = WatermarkTracker::new(WatermarkConfig {
        max_out_of_orderness_us: 0,
        idle_timeout: std::time::Duration::from_secs(1),
    });
    for (db, shard) in tributary_live::inputs::order_shards(shards) {
        tracker.expect_cdc_source(&db, shard);
    }
    let inputs = tributary_live::inputs::order_inputs(&kafka.topic_prefix, &["order_items"]);
    let mut driver = Driver::open(
        &kafka,
        "e2e-cancelled-driver",
        inputs,
        tracker,
        &Default::default(),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), driver.next()).await;
        let shards = driver.tracker().cdc_shards();
        if shards.iter().all(|(_, _, w, _)| w.is_some()) {
            assert_eq!(shards.len() as u32, env.config().stack.shards as u32);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CDC watermarks not filed within 60 s of cancelled calls: {shards:?}"
        );
    }
}
