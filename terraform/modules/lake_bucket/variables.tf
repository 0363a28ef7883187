variable "bucket" {
  description = "The lake's bucket name (globally unique)."
  type        = string
}

variable "prefix" {
  description = "The lake's root inside the bucket, ending in a slash (lake.root = s3://<bucket>/<prefix>)."
  type        = string
  default     = "lake/"
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption."
  type        = string
}

variable "noncurrent_days" {
  description = "Days a replaced or deleted object version is kept (the window a lake restore can reach back)."
  type        = number
  default     = 30
}

variable "bronze_ia_days" {
  description = "Days after which bronze's change-log files move to STANDARD_IA."
  type        = number
  default     = 60
}

variable "access_log_days" {
  description = "Days S3 access logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
