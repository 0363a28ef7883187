variable "name" {
  description = "Name prefix of every resource, e.g. tributary-prod."
  type        = string
}

variable "region" {
  description = "AWS region, for the S3 endpoint's service name."
  type        = string
}

variable "cidr" {
  description = "The VPC's address range; subnets are /20s of a /16."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Zones to spread subnets over, named (three for Multi-AZ shards and brokers); a fixed list, so a zone AWS adds later changes nothing."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper, for dev) instead of one per zone."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the flow logs."
  type        = string
}

variable "log_retention_days" {
  description = "How long flow logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
