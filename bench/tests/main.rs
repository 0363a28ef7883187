//! The benchmarks end to end at a tiny scale: real Delta tables, our engine,
//! DuckDB (the Python package, installed by `scripts/bootstrap.sh`) and a
//! scratch PostgreSQL cluster. A missing DuckDB or PostgreSQL fails the test.

mod ssb {
    use tpchgen::generators::{LineItemGenerator, OrderGenerator};
    use tributary_bench::ssb::{self, Options, QUERIES};

    const SCALE: f64 = 0.01;

    /// Q1.1 and Q1.2 computed straight from TPC-H's rows, without the SSB
    /// derivation or any SQL engine: `(year or yearmonth filter, discount
    /// range, quantity range)`.
    fn flight_one_by_hand() -> (i128, i128) {
        let orders: std::collections::HashMap<i64, (i32, i32)> = OrderGenerator::new(SCALE, 1, 1)
            .iter()
            .map(|o| {
                let (y, m, _) = o.o_orderdate.to_ymd();
                (o.o_orderkey, (1900 + y, m))
            })
            .collect();
        let (mut q11, mut q12) = (0i128, 0i128);
        for line in LineItemGenerator::new(SCALE, 1, 1).iter() {
            let (year, month) = orders[&line.l_orderkey];
            let discount = line.l_discount.into_inner();
            let price = line.l_extendedprice.into_inner() as i128;
            if year == 1993 && (1..=3).contains(&discount) && line.l_quantity < 25 {
                q11 += price * discount as i128;
            }
            if (year, month) == (1994, 1)
                && (4..=6).contains(&discount)
                && (26..=35).contains(&line.l_quantity)
            {
                q12 += price * discount as i128;
            }
        }
        (q11, q12)
    }

    fn single_number(rows: &ssb::Rows) -> i128 {
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows[0][0]
            .as_deref()
            .expect("a sum over matching rows")
            .parse()
            .expect("an integer")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_engines_agree_at_a_tiny_scale() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            scale: SCALE,
            runs: 1,
            ..Options::new(dir.path().to_path_buf())
        };
        let report = ssb::run(&options).await.expect("benchmark runs");
        println!("{report}");

        assert_eq!(
            report.lineorder_rows,
            LineItemGenerator::new(SCALE, 1, 1).iter().count()
        );
        assert!(report.generated_in.is_some());
        let duckdb = report.duckdb.as_ref().expect("duckdb ran");
        let postgres = report.postgres.as_ref().expect("postgres ran");
        let plain = report.datafusion.as_ref().expect("plain DataFusion ran");
        assert!(plain.mismatches.is_empty(), "{:?}", plain.mismatches);
        assert!(duckdb.mismatches.is_empty(), "{:?}", duckdb.mismatches);
        assert!(postgres.mismatches.is_empty(), "{:?}", postgres.mismatches);
        assert!(report.answers_agree());
        assert_eq!(report.tributary.len(), QUERIES.len());
        assert!(report.tributary.iter().all(|m| m.times.len() == 1));
        // Repeated over unchanged tables with the result cache: the same
        // answers (the run fails when a repeat was not a cache hit).
        assert_eq!(report.cached.len(), QUERIES.len());
        for (a, b) in report.tributary.iter().zip(&report.cached) {
            assert_eq!(ssb::answers::compare(&a.rows, &b.rows), Ok(()));
        }

        // The answers are not all trivially empty.
        let non_empty = report
            .tributary
            .iter()
            .filter(|m| !m.rows.is_empty() && m.rows[0].iter().all(Option::is_some))
            .count();
        assert!(non_empty >= 11, "only {non_empty} queries found rows");

        // And the first two agree with sums made from TPC-H's own rows.
        let (q11, q12) = flight_one_by_hand();
        assert_eq!(single_number(&report.tributary[0].rows), q11);
        assert_eq!(single_number(&report.tributary[1].rows), q12);

        // A second run reuses the data set instead of generating it again.
        let again = Options {
            datafusion: false,
            duckdb: false,
            postgres: false,
            ..options
        };
        let second = ssb::run(&again).await.expect("second run");
        assert!(second.generated_in.is_none());
        assert_eq!(second.lineorder_rows, report.lineorder_rows);
        for (a, b) in report.tributary.iter().zip(&second.tributary) {
            assert_eq!(ssb::answers::compare(&a.rows, &b.rows), Ok(()));
        }
    }
}

mod compaction {
    use tributary_bench::compaction::{Options, run};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_day_compacts_and_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        // Insert-only: one small file per commit.
        let options = Options {
            commits: 30,
            updates: 0,
            runs: 1,
            ..Options::new(dir.path().join("lake"))
        };
        // `run` fails when the answers differ after compaction.
        let report = run(&options).await.unwrap();
        assert_eq!(report.before.files, 30, "{report}");
        assert_eq!(report.after.files, 1, "{report}");
        assert_eq!(report.after.log_tail, 0, "{report}");
        assert_eq!(report.rows, 30 * 40, "{report}");
    }
}
