variable "name" {
  description = "Cluster name, e.g. tributary-prod."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's range."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the control plane's interfaces and the nodes."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for Kubernetes secrets, logs, images and the config secret."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS version."
  type        = string
  default     = "1.33"
}

variable "node_instance_types" {
  description = "Node instance types (docs/capacity.md: cores the processes need at peak, plus headroom)."
  type        = list(string)
  default     = ["m7g.xlarge"]
}

variable "node_min" {
  description = "Nodes at least (and at start)."
  type        = number
  default     = 3
}

variable "node_max" {
  description = "Nodes at most (the cluster autoscaler's ceiling)."
  type        = number
  default     = 12
}

variable "log_retention_days" {
  description = "How long control plane logs are kept."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
