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
  name = "tributary-prod"
  tags = {
    project     = "tributary"
    environment = "prod"
    managed-by  = "terraform"
  }
}

module "kms" {
  source = "../../modules/kms"
  name   = local.name
  region = var.region
  tags   = local.tags
}

module "network" {
  source             = "../../modules/network"
  name               = local.name
  region             = var.region
  cidr               = "10.40.0.0/16"
  availability_zones = var.availability_zones
  kms_key_arn        = module.kms.key_arn
  tags               = local.tags
}

module "lake" {
  source          = "../../modules/lake_bucket"
  bucket          = var.lake_bucket
  kms_key_arn     = module.kms.key_arn
  noncurrent_days = 30
  tags            = local.tags
}

module "services" {
  source              = "../../modules/services"
  name                = local.name
  vpc_id              = module.network.vpc_id
  vpc_cidr            = module.network.vpc_cidr
  subnet_ids          = module.network.private_subnet_ids
  kms_key_arn         = module.kms.key_arn
  node_instance_types = var.node_instance_types
  node_min            = 3
  node_max            = 12
  tags                = local.tags
}

module "kafka" {
  source                   = "../../modules/kafka"
  name                     = local.name
  vpc_id                   = module.network.vpc_id
  vpc_cidr                 = module.network.vpc_cidr
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.services.security_group_id
  kms_key_arn              = module.kms.key_arn
  instance_type            = var.broker_instance_type
  volume_gb                = var.broker_volume_gb
  tags                     = local.tags
}

module "shards" {
  source                   = "../../modules/shards"
  name                     = local.name
  vpc_id                   = module.network.vpc_id
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.services.security_group_id
  kms_key_arn              = module.kms.key_arn
  shard_count              = var.shard_count
  shard_instance_class     = var.shard_instance_class
  multi_az                 = true
  backup_retention_days    = 14
  deletion_protection      = true
  tags                     = local.tags
}

module "iam" {
  source            = "../../modules/iam"
  name              = local.name
  oidc_provider_arn = module.services.oidc_provider_arn
  oidc_issuer       = module.services.oidc_issuer
  bucket_arn        = module.lake.bucket_arn
  config_secret_arn = module.services.config_secret_arn
  kms_key_arn       = module.kms.key_arn
  tags              = local.tags
}

module "alarms" {
  source           = "../../modules/alarms"
  name             = local.name
  kms_key_arn      = module.kms.key_arn
  alarm_emails     = var.alarm_emails
  db_instance_ids  = module.shards.instance_ids
  msk_cluster_name = local.name
  msk_broker_count = length(var.availability_zones)
  tags             = local.tags
}
