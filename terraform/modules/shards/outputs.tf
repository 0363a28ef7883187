output "shard_endpoints" {
  description = "host:port of each order shard, in shard order, for [sources] shards."
  value       = [for i in range(var.shard_count) : aws_db_instance.this["shard-${i}"].endpoint]
}

output "catalog_endpoint" {
  description = "host:port of the catalog database."
  value       = aws_db_instance.this["catalog"].endpoint
}

output "instance_ids" {
  description = "RDS identifiers, for alarms."
  value       = { for k, db in aws_db_instance.this : k => db.identifier }
}

output "master_secret_arns" {
  description = "Secrets Manager ARNs of the master passwords."
  value       = { for k, db in aws_db_instance.this : k => db.master_user_secret[0].secret_arn }
}
