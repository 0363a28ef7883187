variable "name" {
  description = "Name prefix of every resource, e.g. tributary-prod."
  type        = string
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "availability_zones" {
  description = "Three zones of the region (shards, brokers and nodes spread over them)."
  type        = list(string)
}

variable "lake_bucket" {
  description = "The lake's bucket name (globally unique)."
  type        = string
}

variable "shard_count" {
  description = "Order shards (docs/capacity.md)."
  type        = number
}

variable "shard_instance_class" {
  description = "Instance class of each shard."
  type        = string
}

variable "broker_instance_type" {
  description = "MSK broker instance type."
  type        = string
}

variable "broker_volume_gb" {
  description = "EBS storage per broker, GiB."
  type        = number
}

variable "node_instance_types" {
  description = "EKS node instance types."
  type        = list(string)
}

variable "alarm_emails" {
  description = "Who gets the alarms."
  type        = list(string)
  default     = []
}

variable "cidr" {
  description = "The VPC's address range."
  type        = string
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper) instead of one per zone."
  type        = bool
}

variable "noncurrent_days" {
  description = "Days a replaced lake object version is kept."
  type        = number
}

variable "node_min" {
  description = "EKS nodes at least."
  type        = number
}

variable "node_max" {
  description = "EKS nodes at most."
  type        = number
}

variable "multi_az" {
  description = "A synchronous standby per database in a second zone."
  type        = bool
}

variable "backup_retention_days" {
  description = "Days of point-in-time recovery."
  type        = number
}

variable "deletion_protection" {
  description = "Refuse to delete the databases."
  type        = bool
}
