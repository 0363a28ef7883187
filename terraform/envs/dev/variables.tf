variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Three zones of the region (shards, brokers and nodes spread over them)."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "lake_bucket" {
  description = "The lake's bucket name (globally unique)."
  type        = string
  default     = "tributary-dev-lake"
}

variable "shard_count" {
  description = "Order shards (docs/capacity.md)."
  type        = number
  default     = 2
}

variable "shard_instance_class" {
  description = "Instance class of each shard."
  type        = string
  default     = "db.t4g.medium"
}

variable "broker_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.t3.small"
}

variable "broker_volume_gb" {
  description = "EBS storage per broker, GiB."
  type        = number
  default     = 100
}

variable "node_instance_types" {
  description = "EKS node instance types."
  type        = list(string)
  default     = ["t4g.large"]
}

variable "alarm_emails" {
  description = "Who gets the alarms."
  type        = list(string)
  default     = []
}
