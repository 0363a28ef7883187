variable "name" {
  description = "Role name prefix, e.g. tributary-prod (roles are <name>-<process>)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the service accounts."
  type        = string
  default     = "tributary"
}

variable "oidc_provider_arn" {
  description = "The cluster's OIDC provider."
  type        = string
}

variable "oidc_issuer" {
  description = "The cluster's OIDC issuer without https://."
  type        = string
}

variable "bucket_arn" {
  description = "The lake's bucket."
  type        = string
}

variable "prefix" {
  description = "The lake's root inside the bucket, ending in a slash."
  type        = string
  default     = "lake/"
}

variable "config_secret_arn" {
  description = "The secret holding tributary.toml."
  type        = string
}

variable "kms_key_arn" {
  description = "The key the lake and the secret are encrypted with."
  type        = string
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
