variable "name" {
  description = "Name prefix, e.g. tributary-prod."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the SNS topic."
  type        = string
}

variable "alarm_emails" {
  description = "Addresses subscribed to the alarm topic."
  type        = list(string)
  default     = []
}

variable "db_instance_ids" {
  description = "RDS identifiers by role (shard-0, ..., catalog)."
  type        = map(string)
}

variable "msk_cluster_name" {
  description = "The MSK cluster's name."
  type        = string
}

variable "msk_broker_count" {
  description = "Brokers in the MSK cluster."
  type        = number
}

variable "slot_lag_bytes" {
  description = "WAL bytes a replication slot may hold back before the alarm."
  type        = number
  default     = 1073741824
}

variable "free_storage_bytes" {
  description = "Free storage below which a database alarms."
  type        = number
  default     = 21474836480
}

variable "broker_disk_percent" {
  description = "Broker data disk use above which the alarm fires."
  type        = number
  default     = 75
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
