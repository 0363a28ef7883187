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
  default     = "tributary-prod-lake"
}

variable "shard_count" {
  description = "Order shards (docs/capacity.md)."
  type        = number
  default     = 4
}

variable "shard_instance_class" {
  description = "Instance class of each shard."
  type        = string
  default     = "db.r6g.xlarge"
}

variable "broker_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m7g.large"
}

variable "broker_volume_gb" {
  description = "EBS storage per broker, GiB."
  type        = number
  default     = 1000
}

variable "node_instance_types" {
  description = "EKS node instance types."
  type        = list(string)
  default     = ["m7g.xlarge"]
}

variable "alarm_emails" {
  description = "Who gets the alarms."
  type        = list(string)
  default     = []
}
