output "lake_root" {
  description = "lake.root for tributary.toml."
  value       = module.lake.lake_root
}

output "shard_endpoints" {
  description = "The order shards, in shard order."
  value       = module.shards.shard_endpoints
}

output "catalog_endpoint" {
  description = "The catalog database."
  value       = module.shards.catalog_endpoint
}

output "kafka_brokers" {
  description = "[kafka] brokers (SASL_SSL, SCRAM-SHA-512)."
  value       = module.kafka.bootstrap_brokers_sasl_scram
}

output "repository_url" {
  description = "Where the pipeline pushes the image."
  value       = module.services.repository_url
}

output "cluster_name" {
  description = "The EKS cluster the pipeline deploys to."
  value       = module.services.cluster_name
}

output "config_secret_arn" {
  description = "The secret the pipeline writes tributary-config from."
  value       = module.services.config_secret_arn
}

output "service_role_arns" {
  description = "IAM role per process (deploy/k8s/overlays/<env>/irsa.yaml)."
  value       = module.iam.role_arns
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms."
  value       = module.alarms.topic_arn
}
