//! The jobs of a folder as a DAG.
//!
//! Loading never stops at the first bad file: each bad file (a parse
//! error, an unknown upstream, a cycle) is refused with an error naming the
//! file and the job, and every other job loads. A job that depends on a
//! refused job is refused too (its trigger could never come).
//!
//! Logical times flow down the edges: a job with upstreams has no schedule
//! and its run for logical time T starts when every upstream succeeded for
//! T. So all the scheduled jobs above a job must share one schedule, or its
//! upstreams would never agree on a T; that is checked here as well.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::job::Job;
use crate::{Error, Result};

/// The loaded jobs and the refused files.
#[derive(Debug, Default)]
pub struct Dag {
    pub jobs: BTreeMap<String, Job>,
    pub errors: Vec<Error>,
}

impl Dag {
    /// Every `*.toml` of `dir`, checked.
    pub fn load(dir: &Path) -> Result<Dag> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            what: format!("reading the job folder {}", dir.display()),
            source,
        })?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match Job::load(&f) {
                Ok(j) => parsed.push(j),
                Err(e) => errors.push(e),
            }
        }
        Ok(Dag::from_jobs(parsed, errors))
    }

    /// Checks the edges of `jobs`; `errors` are refusals found before.
    pub fn from_jobs(jobs: Vec<Job>, mut errors: Vec<Error>) -> Dag {
        let mut ok: BTreeMap<String, Job> = jobs.into_iter().map(|j| (j.name.clone(), j)).collect();
        let refuse = |j: &Job, field: &str, reason: String| Error::JobFile {
            file: j.file.display().to_string(),
            job: j.name.clone(),
            field: field.to_string(),
            reason,
        };
        // Unknown upstreams, until nothing changes (a refusal can orphan
        // the jobs below it).
        loop {
            let bad: Vec<(String, String)> = ok
                .values()
                .filter_map(|j| {
                    j.depends_on
                        .iter()
                        .find(|d| !ok.contains_key(*d))
                        .map(|d| (j.name.clone(), d.clone()))
                })
                .collect();
            if bad.is_empty() {
                break;
            }
            for (name, missing) in bad {
                let j = ok.remove(&name).expect("listed above");
                errors.push(refuse(
                    &j,
                    "depends_on",
                    format!("no job `{missing}` (no such file, or its file was refused)"),
                ));
            }
        }
        // Cycles: whatever a topological sort cannot place.
        let order = topological(&ok);
        let placed: BTreeSet<&String> = order.iter().collect();
        // Unplaced jobs are on a cycle or below one; only those on a cycle
        // reach themselves.
        let cyclic: Vec<String> = ok
            .keys()
            .filter(|n| !placed.contains(n) && ancestors(&ok, n).contains(*n))
            .cloned()
            .collect();
        if !cyclic.is_empty() {
            let members = cyclic.join(", ");
            for name in &cyclic {
                let j = ok.remove(name).expect("listed above");
                errors.push(refuse(
                    &j,
                    "depends_on",
                    format!("part of a dependency cycle among: {members}"),
                ));
            }
            // Jobs below a cycle lost an upstream.
            let again = ok.into_values().collect();
            return Dag::from_jobs(again, errors);
        }
        // One schedule above each job.
        let mut bad = Vec::new();
        for j in ok.values().filter(|j| !j.depends_on.is_empty()) {
            if let Some(c) = j
                .depends_on
                .iter()
                .find(|d| ok.get(*d).is_some_and(|u| u.continuous))
            {
                bad.push((
                    j.name.clone(),
                    format!("{c} is a continuous job: it has no logical times to run after"),
                ));
                continue;
            }
            let roots: BTreeSet<(String, String)> = ancestors(&ok, &j.name)
                .iter()
                .filter_map(|a| ok[a].schedule.as_ref())
                .map(|s| (s.expr.clone(), s.tz.name().to_string()))
                .collect();
            if roots.len() > 1 {
                let list: Vec<String> =
                    roots.iter().map(|(e, t)| format!("{e:?} in {t}")).collect();
                bad.push((
                    j.name.clone(),
                    format!(
                        "its upstream jobs run on different schedules ({}), so they never agree on a logical time",
                        list.join(", ")
                    ),
                ));
            }
        }
        for (name, reason) in bad {
            let j = ok.remove(&name).expect("listed above");
            errors.push(refuse(&j, "depends_on", reason));
        }
        Dag { jobs: ok, errors }
    }

    /// Job names, upstream before downstream.
    pub fn order(&self) -> Vec<String> {
        topological(&self.jobs)
    }

    /// The jobs that list `name` in their `depends_on`.
    pub fn downstream(&self, name: &str) -> Vec<&Job> {
        self.jobs
            .values()
            .filter(|j| j.depends_on.iter().any(|d| d == name))
            .collect()
    }

    /// The DAG as text, each job under its upstreams.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in self.order() {
            let j = &self.jobs[&name];
            let _ = writeln!(out, "{name:<24} {:<13} {}", j.task.kind(), j.when());
            for d in self.downstream(&name) {
                let _ = writeln!(out, "  └─> {}", d.name);
            }
        }
        out
    }

    /// The DAG in Graphviz's DOT language.
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph workflows {\n  rankdir=LR;\n");
        for (name, j) in &self.jobs {
            let label = match &j.schedule {
                Some(s) => format!("{name}\\n{}", s.expr),
                None => name.clone(),
            };
            let _ = writeln!(out, "  \"{name}\" [label=\"{label}\", shape=box];");
            for d in &j.depends_on {
                let _ = writeln!(out, "  \"{d}\" -> \"{name}\";");
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Kahn's algorithm; jobs on a cycle are left out.
fn topological(jobs: &BTreeMap<String, Job>) -> Vec<String> {
    let mut indegree: BTreeMap<&str, usize> = jobs
        .values()
        .map(|j| {
            (
                j.name.as_str(),
                j.depends_on
                    .iter()
                    .filter(|d| jobs.contains_key(*d))
                    .count(),
            )
        })
        .collect();
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| *k)
        .collect();
    ready.reverse();
    let mut out = Vec::new();
    while let Some(n) = ready.pop() {
        out.push(n.to_string());
        let mut next: Vec<&str> = Vec::new();
        for j in jobs
            .values()
            .filter(|j| j.depends_on.iter().any(|d| d == n))
        {
            let e = indegree.get_mut(j.name.as_str()).expect("every job");
            *e -= 1;
            if *e == 0 {
                next.push(j.name.as_str());
            }
        }
        next.sort_unstable_by(|a, b| b.cmp(a));
        ready.extend(next);
    }
    out
}

/// Every job above `name`.
fn ancestors(jobs: &BTreeMap<String, Job>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        for d in &jobs[&n].depends_on {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn job(name: &str, text: &str) -> Job {
        Job::parse(Path::new(&format!("jobs/{name}.toml")), text).unwrap()
    }

    fn shell(name: &str, extra: &str) -> Job {
        job(
            name,
            &format!("{extra}\n[task]\nkind = \"shell\"\ncommand = \"true\"\n"),
        )
    }

    #[test]
    fn a_cycle_and_a_missing_upstream_are_refused_by_name_and_the_rest_loads() {
        let dag = Dag::from_jobs(
            vec![
                shell("root", "schedule = \"0 * * * *\""),
                shell("child", "depends_on = [\"root\"]"),
                shell("a", "depends_on = [\"b\"]"),
                shell("b", "depends_on = [\"a\"]"),
                shell("below_cycle", "depends_on = [\"a\"]"),
                shell("orphan", "depends_on = [\"ghost\"]"),
            ],
            Vec::new(),
        );
        assert_eq!(dag.jobs.keys().collect::<Vec<_>>(), ["child", "root"]);
        let errors: Vec<String> = dag.errors.iter().map(|e| e.to_string()).collect();
        let find = |job: &str| {
            errors
                .iter()
                .find(|e| e.contains(&format!("jobs/{job}.toml")))
                .cloned()
        };
        assert!(
            find("orphan").unwrap().contains("no job `ghost`"),
            "{errors:?}"
        );
        assert!(
            find("a").unwrap().contains("cycle among: a, b"),
            "{errors:?}"
        );
        assert!(find("b").unwrap().contains("cycle"), "{errors:?}");
        assert!(
            find("below_cycle").unwrap().contains("no job `a`"),
            "{errors:?}"
        );
        assert_eq!(dag.order(), ["root", "child"]);
    }

    #[test]
    fn a_job_cannot_run_after_a_continuous_one() {
        let dag = Dag::from_jobs(
            vec![
                shell("follow", "continuous = true"),
                shell("after", "depends_on = [\"follow\"]"),
            ],
            Vec::new(),
        );
        assert!(dag.jobs.contains_key("follow"));
        assert!(!dag.jobs.contains_key("after"));
        let e = dag.errors[0].to_string();
        assert!(e.contains("after.toml") && e.contains("continuous"), "{e}");
    }

    #[test]
    fn upstreams_on_different_schedules_are_refused() {
        let dag = Dag::from_jobs(
            vec![
                shell("hourly", "schedule = \"0 * * * *\""),
                shell("daily", "schedule = \"0 3 * * *\""),
                shell("join", "depends_on = [\"hourly\", \"daily\"]"),
            ],
            Vec::new(),
        );
        assert!(!dag.jobs.contains_key("join"));
        assert!(dag.errors[0].to_string().contains("different schedules"));
    }

    #[test]
    fn the_order_puts_upstreams_first_and_renders() {
        let dag = Dag::from_jobs(
            vec![
                shell("c", "depends_on = [\"b\"]"),
                shell("b", "depends_on = [\"a\"]"),
                shell("a", "schedule = \"*/5 * * * *\""),
                shell("d", "depends_on = [\"a\"]"),
            ],
            Vec::new(),
        );
        assert_eq!(dag.order(), ["a", "b", "c", "d"]);
        let text = dag.render();
        assert!(text.contains("after a"), "{text}");
        assert!(dag.dot().contains("\"a\" -> \"b\""));
    }

    #[test]
    fn the_shipped_jobs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        let dag = Dag::load(&dir).unwrap();
        assert!(dag.errors.is_empty(), "{:?}", dag.errors);
        assert!(dag.jobs.len() >= 4, "{:?}", dag.jobs.keys());
        let examples = Dag::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap();
        assert!(examples.errors.is_empty(), "{:?}", examples.errors);
        assert!(examples.jobs["marts_follow"].continuous);
    }
}
