# Production: three zones, Multi-AZ shards, three MSK brokers, an EKS cluster
# of on-demand nodes, deletion protection on, 14 days of point-in-time
# recovery. Sizes come from docs/capacity.md (`tributary capacity`).

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  tags = {
    project     = "tributary"
    environment = "prod"
    managed-by  = "terraform"
  }
}

module "platform" {
  source                = "../../modules/platform"
  name                  = "tributary-prod"
  tags                  = local.tags
  region                = var.region
  availability_zones    = var.availability_zones
  alarm_emails          = var.alarm_emails
  cidr                  = "10.40.0.0/16"
  single_nat_gateway    = false
  lake_bucket           = "tributary-prod-lake"
  noncurrent_days       = 30
  shard_count           = 4
  shard_instance_class  = "db.r6g.xlarge"
  multi_az              = true
  backup_retention_days = 14
  deletion_protection   = true
  broker_instance_type  = "kafka.m7g.large"
  broker_volume_gb      = 1000
  node_instance_types   = ["m7g.xlarge"]
  node_min              = 3
  node_max              = 12
}
