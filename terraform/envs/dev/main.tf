# Development: the same shape as prod at the smallest size that still shows
# it (two shards, single-AZ instances, one NAT gateway, two nodes), so what
# is tried here is what runs in prod. Deletion protection is off.

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  tags = {
    project     = "tributary"
    environment = "dev"
    managed-by  = "terraform"
  }
}

module "platform" {
  #checkov:skip=CKV_AWS_157:dev runs single-AZ to halve its cost; prod is Multi-AZ (envs/prod)
  #checkov:skip=CKV_AWS_293:dev databases are disposable; prod has deletion protection (envs/prod)
  source                = "../../modules/platform"
  name                  = "tributary-dev"
  tags                  = local.tags
  region                = var.region
  availability_zones    = var.availability_zones
  alarm_emails          = var.alarm_emails
  cidr                  = "10.50.0.0/16"
  single_nat_gateway    = true
  lake_bucket           = "tributary-dev-lake"
  noncurrent_days       = 7
  shard_count           = 2
  shard_instance_class  = "db.t4g.medium"
  multi_az              = false
  backup_retention_days = 3
  deletion_protection   = false
  broker_instance_type  = "kafka.t3.small"
  broker_volume_gb      = 100
  node_instance_types   = ["t4g.large"]
  node_min              = 2
  node_max              = 4
}
