output "platform" {
  description = "Everything the environment made that tributary.toml, the pipeline and the service accounts need: lake_root, shard_endpoints, catalog_endpoint, kafka_brokers, repository_url, cluster_name, config_secret_arn, service_role_arns, alarm_topic_arn (terraform/modules/platform/outputs.tf)."
  value       = module.platform
}
