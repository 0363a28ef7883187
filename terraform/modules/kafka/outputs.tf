output "bootstrap_brokers_sasl_scram" {
  description = "[kafka] brokers for tributary.toml (port 9096, SASL_SSL with SCRAM-SHA-512)."
  value       = aws_msk_cluster.this.bootstrap_brokers_sasl_scram
}

output "scram_secret_arn" {
  description = "The secret holding the SCRAM user name and password."
  value       = aws_secretsmanager_secret.scram.arn
}

output "cluster_arn" {
  description = "The MSK cluster."
  value       = aws_msk_cluster.this.arn
}
