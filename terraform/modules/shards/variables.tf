variable "name" {
  description = "Name prefix, e.g. tributary-prod."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the DB subnet group (two zones at least)."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "Security group of the services that connect."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for storage, Performance Insights and the master secret."
  type        = string
}

variable "shard_count" {
  description = "Order shards (docs/capacity.md: orders per second over the per-shard rate the benchmarks measured)."
  type        = number
  default     = 2
}

variable "engine_major" {
  description = "PostgreSQL major version (the parameter group family)."
  type        = string
  default     = "15"
}

variable "engine_version" {
  description = "PostgreSQL version."
  type        = string
  default     = "15.8"
}

variable "shard_instance_class" {
  description = "Instance class of each order shard."
  type        = string
  default     = "db.r6g.large"
}

variable "catalog_instance_class" {
  description = "Instance class of the catalog database."
  type        = string
  default     = "db.r6g.large"
}

variable "shard_storage_gb" {
  description = "Initial storage per shard, GiB (autoscales to four times this)."
  type        = number
  default     = 200
}

variable "catalog_storage_gb" {
  description = "Initial storage of the catalog, GiB."
  type        = number
  default     = 50
}

variable "multi_az" {
  description = "A synchronous standby in a second zone, with automatic failover."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups and WAL for point-in-time restore."
  type        = number
  default     = 14
}

variable "deletion_protection" {
  description = "Refuse to delete the instances."
  type        = bool
  default     = true
}

variable "max_replication_slots" {
  description = "Logical replication slots per instance (one per CDC reader, plus room for a resnapshot and a standby reader)."
  type        = number
  default     = 10
}

variable "max_slot_wal_keep_mb" {
  description = "WAL a slot may hold back before PostgreSQL invalidates it, MiB."
  type        = number
  default     = 51200
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
