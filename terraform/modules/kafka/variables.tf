variable "name" {
  description = "Cluster name, e.g. tributary-prod."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's range (brokers replicate to each other inside it)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one broker in each."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "Security group of the services that produce and consume."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for data at rest, logs and the SCRAM secret."
  type        = string
}

variable "kafka_version" {
  description = "Kafka version of the brokers."
  type        = string
  default     = "3.7.x"
}

variable "instance_type" {
  description = "Broker instance type (docs/capacity.md sizes it)."
  type        = string
  default     = "kafka.m7g.large"
}

variable "volume_gb" {
  description = "EBS storage per broker, GiB (docs/capacity.md: change-event bytes per day times retention times three copies, over the brokers)."
  type        = number
  default     = 500
}

variable "retention_hours" {
  description = "How long change events stay in the topics. The lake holds them for good; this is how far back a consumer can replay, and a lake restore older than it needs a re-snapshot."
  type        = number
  default     = 168
}

variable "log_retention_days" {
  description = "How long broker logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
