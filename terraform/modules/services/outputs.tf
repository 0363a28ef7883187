output "cluster_name" {
  description = "The EKS cluster."
  value       = aws_eks_cluster.this.name
}

output "oidc_provider_arn" {
  description = "The cluster's OIDC provider, for IRSA trust policies."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer" {
  description = "The cluster's OIDC issuer URL without the scheme."
  value       = replace(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
}

output "security_group_id" {
  description = "The services' security group (admitted by the shards and brokers)."
  value       = aws_security_group.services.id
}

output "repository_url" {
  description = "ECR repository of the tributary image."
  value       = aws_ecr_repository.tributary.repository_url
}

output "config_secret_arn" {
  description = "Secrets Manager secret holding tributary.toml."
  value       = aws_secretsmanager_secret.config.arn
}
