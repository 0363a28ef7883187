//! End-to-end tests of the `tributary` binary on real components:
//! PostgreSQL clusters made with `initdb`, the tansu broker, Delta tables in
//! a temporary folder or on an s3s-fs server, and the binary's commands run
//! as separate processes so they can be SIGKILLed.
//!
//! One test binary (one link, one `common`). Tests that start a stack take
//! turns ([`common::Env::stack`]); the others run beside them. Run one group
//! with a module filter: `cargo test --workspace --test main -- e2e::cdc::`.

mod common;

mod e2e {
    mod activity;
    mod bench_cdc;
    mod bench_fraud;
    mod bench_lake;
    mod bench_workflows;
    mod cache;
    mod cdc;
    mod chaos;
    mod console;
    mod fraud;
    mod gateway;
    mod ha;
    mod interop;
    mod lease;
    mod maintenance;
    mod observe;
    mod pipeline;
    mod s3;
    mod secrets;
    mod ui;
    mod workflows;
}
