output "role_arns" {
  description = "Role ARN per process, for the service accounts' eks.amazonaws.com/role-arn."
  value       = { for k, r in aws_iam_role.service : k => r.arn }
}
