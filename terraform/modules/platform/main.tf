# The whole AWS shape of one environment: every module of terraform/modules
# wired together. terraform/envs/{dev,prod} call it with their sizes, so the
# two environments differ only in the numbers they pass.

module "kms" {
  source = "../../modules/kms"
  name   = var.name
  region = var.region
  tags   = var.tags
}

module "network" {
  source             = "../../modules/network"
  name               = var.name
  region             = var.region
  cidr               = var.cidr
  single_nat_gateway = var.single_nat_gateway
  availability_zones = var.availability_zones
  kms_key_arn        = module.kms.key_arn
  tags               = var.tags
}

module "lake" {
  source          = "../../modules/lake_bucket"
  bucket          = var.lake_bucket
  kms_key_arn     = module.kms.key_arn
  noncurrent_days = var.noncurrent_days
  tags            = var.tags
}

module "services" {
  source              = "../../modules/services"
  name                = var.name
  vpc_id              = module.network.vpc_id
  vpc_cidr            = module.network.vpc_cidr
  subnet_ids          = module.network.private_subnet_ids
  kms_key_arn         = module.kms.key_arn
  node_instance_types = var.node_instance_types
  node_min            = var.node_min
  node_max            = var.node_max
  tags                = var.tags
}

module "kafka" {
  source                   = "../../modules/kafka"
  name                     = var.name
  vpc_id                   = module.network.vpc_id
  vpc_cidr                 = module.network.vpc_cidr
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.services.security_group_id
  kms_key_arn              = module.kms.key_arn
  instance_type            = var.broker_instance_type
  volume_gb                = var.broker_volume_gb
  tags                     = var.tags
}

module "shards" {
  source                   = "../../modules/shards"
  name                     = var.name
  vpc_id                   = module.network.vpc_id
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.services.security_group_id
  kms_key_arn              = module.kms.key_arn
  shard_count              = var.shard_count
  shard_instance_class     = var.shard_instance_class
  multi_az                 = var.multi_az
  backup_retention_days    = var.backup_retention_days
  deletion_protection      = var.deletion_protection
  tags                     = var.tags
}

module "iam" {
  source            = "../../modules/iam"
  name              = var.name
  oidc_provider_arn = module.services.oidc_provider_arn
  oidc_issuer       = module.services.oidc_issuer
  bucket_arn        = module.lake.bucket_arn
  config_secret_arn = module.services.config_secret_arn
  kms_key_arn       = module.kms.key_arn
  tags              = var.tags
}

module "alarms" {
  source           = "../../modules/alarms"
  name             = var.name
  kms_key_arn      = module.kms.key_arn
  alarm_emails     = var.alarm_emails
  db_instance_ids  = module.shards.instance_ids
  msk_cluster_name = var.name
  msk_broker_count = length(var.availability_zones)
  tags             = var.tags
}
