variable "name" {
  description = "Name prefix, e.g. tributary-prod."
  type        = string
}

variable "region" {
  description = "AWS region (CloudWatch Logs' service principal is regional)."
  type        = string
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
