//! `tributary fraud run | tail | rules check`: the fraud team's commands.

use anyhow::Result;
use tributary::{parse_duration, shutdown_on_signals};
use tributary_live::fraud::rules::Rules;
use tributary_live::fraud::{self, alerts_topic};
use tributary_stack::{Config, Platform};

use crate::args::{FraudCommand, RulesCommand};

pub async fn run(config: Config, command: FraudCommand) -> Result<()> {
    match command {
        FraudCommand::Rules {
            command: RulesCommand::Check { file },
        } => {
            let rules = Rules::load(&file)?;
            let on: Vec<&str> = rules.enabled().iter().map(|r| r.as_str()).collect();
            println!(
                "{}: {} rules on: {}",
                file.display(),
                on.len(),
                on.join(", ")
            );
            Ok(())
        }
        FraudCommand::Run {
            rules,
            webhook,
            metrics,
        } => {
            let platform = Platform::load(config)?;
            let mut live = platform.config().live.clone();
            if rules.is_some() {
                live.fraud.rules = rules;
            }
            if webhook.is_some() {
                live.fraud.webhook = webhook;
            }
            let kafka = platform.kafka()?.clone();
            let lake = platform.lake()?;
            let shards = platform.sources()?.shards.len() as u32;
            let shutdown = shutdown_on_signals();
            let _announced =
                super::serve_metrics(platform.config(), "fraud", metrics, &shutdown).await?;
            fraud::run(&kafka, &lake, shards, &live, shutdown).await?;
            Ok(())
        }
        FraudCommand::Tail {
            from_beginning,
            json,
            duration,
        } => {
            let platform = Platform::load(config)?;
            let kafka = platform.kafka()?.clone();
            let stop = shutdown_on_signals();
            if let Some(d) = duration.as_deref().map(parse_duration).transpose()? {
                let s = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    s.cancel();
                });
            }
            eprintln!(
                "alerts from {} (Ctrl-C to stop)",
                alerts_topic(&kafka.topic_prefix)
            );
            fraud::tail::tail(&kafka, from_beginning, stop, |alert, payload| {
                if json {
                    println!("{}", String::from_utf8_lossy(payload));
                } else {
                    println!("{}", alert.line());
                }
            })
            .await?;
            Ok(())
        }
    }
}
