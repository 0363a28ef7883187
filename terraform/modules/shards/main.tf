# The order shards and the catalog database: one RDS PostgreSQL instance per
# shard plus one for the catalog (products, the lake's commit coordinator,
# the scheduler's history), each Multi-AZ, encrypted, backed up, with the
# parameters logical replication needs (the CDC reader's pgoutput slots).

resource "aws_db_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_security_group" "db" {
  name        = "${var.name}-postgres"
  description = "PostgreSQL shards of ${var.name}: from tributary's services only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "services" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from tributary's services"
  referenced_security_group_id = var.client_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_parameter_group" "this" {
  name   = "${var.name}-pg${var.engine_major}"
  family = "postgres${var.engine_major}"

  # pgoutput logical replication for the CDC reader.
  parameter {
    name         = "rds.logical_replication"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_replication_slots"
    value        = tostring(var.max_replication_slots)
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_wal_senders"
    value        = tostring(var.max_replication_slots + 5)
    apply_method = "pending-reboot"
  }
  # A slot whose reader is gone must not fill the disk: past this much WAL
  # PostgreSQL invalidates it, and the reader re-snapshots that shard alone
  # (the slot-loss path, docs/architecture.md). The alarm on
  # OldestReplicationSlotLag fires long before.
  parameter {
    name  = "max_slot_wal_keep_size"
    value = tostring(var.max_slot_wal_keep_mb)
  }
  parameter {
    name  = "wal_sender_timeout"
    value = "60000"
  }
  # Query logging: DDL always, and every statement slower than a second.
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  tags = var.tags
}

locals {
  instances = merge(
    { for i in range(var.shard_count) : "shard-${i}" => { db = "orders", class = var.shard_instance_class, storage = var.shard_storage_gb } },
    { catalog = { db = "catalog", class = var.catalog_instance_class, storage = var.catalog_storage_gb } },
  )
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV2_AWS_69:only the CDC reader of tributary's PostgreSQL clients speaks TLS yet, so force_ssl would lock out the order API and the coordinator (docs/operations.md, known gaps); the shards are reachable only from the services' security group inside private subnets
  for_each = local.instances

  identifier     = "${var.name}-${each.key}"
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = each.value.class
  db_name        = each.value.db
  username       = "tributary"
  # The master password lives in Secrets Manager, made and rotated by RDS.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = var.kms_key_arn

  allocated_storage     = each.value.storage
  max_allocated_storage = each.value.storage * 4
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  multi_az               = var.multi_az
  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this.name

  # Point-in-time restore within the retention (the shard half of DR).
  backup_retention_period   = var.backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-${each.key}-final"

  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  monitoring_interval                 = 30
  monitoring_role_arn                 = aws_iam_role.monitoring.arn
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = var.kms_key_arn

  tags = merge(var.tags, { "tributary/role" = each.value.db })
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
