output "bucket" {
  description = "The lake's bucket."
  value       = aws_s3_bucket.lake.id
}

output "bucket_arn" {
  description = "The lake's bucket ARN, for IAM policies."
  value       = aws_s3_bucket.lake.arn
}

output "lake_root" {
  description = "lake.root for tributary.toml."
  value       = "s3://${aws_s3_bucket.lake.id}/${var.prefix}"
}
