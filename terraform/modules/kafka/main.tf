# The change streams: Amazon MSK, three brokers over three zones, TLS between
# clients and brokers and among brokers, SASL/SCRAM client authentication
# with the credentials in Secrets Manager, encryption at rest with the
# environment's key, broker logs in CloudWatch. Reachable only from the
# services' security group.

resource "aws_security_group" "msk" {
  name        = "${var.name}-msk"
  description = "MSK brokers of ${var.name}: SASL/SCRAM over TLS from the services only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "clients" {
  security_group_id            = aws_security_group.msk.id
  description                  = "SASL/SCRAM over TLS from tributary's services"
  referenced_security_group_id = var.client_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 9096
  to_port                      = 9096
}

resource "aws_vpc_security_group_egress_rule" "within_vpc" {
  security_group_id = aws_security_group.msk.id
  description       = "Replication among brokers, inside the VPC"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = 9092
  to_port           = 9098
}

resource "aws_cloudwatch_log_group" "broker" {
  name              = "/tributary/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_msk_configuration" "this" {
  name           = "${var.name}-msk"
  kafka_versions = [var.kafka_version]
  # Change events must not be lost: three copies, two in sync before a write
  # is acknowledged (the CDC reader produces with acks=all and idempotence).
  # Topics are made by the CDC reader, with the partitions of [kafka].
  server_properties = <<-PROPS
    auto.create.topics.enable=false
    default.replication.factor=3
    min.insync.replicas=2
    unclean.leader.election.enable=false
    log.retention.hours=${var.retention_hours}
  PROPS
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = length(var.subnet_ids)
  enhanced_monitoring    = "PER_TOPIC_PER_PARTITION"

  broker_node_group_info {
    instance_type   = var.instance_type
    client_subnets  = var.subnet_ids
    security_groups = [aws_security_group.msk.id]
    storage_info {
      ebs_storage_info {
        volume_size = var.volume_gb
      }
    }
    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  client_authentication {
    unauthenticated = false
    sasl {
      scram = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  open_monitoring {
    prometheus {
      jmx_exporter {
        enabled_in_broker = true
      }
      node_exporter {
        enabled_in_broker = true
      }
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.broker.name
      }
    }
  }

  tags = var.tags
}

# MSK reads SCRAM credentials from secrets whose names start with
# AmazonMSK_ and that are encrypted with a customer-managed key.
resource "aws_secretsmanager_secret" "scram" {
  #checkov:skip=CKV2_AWS_57:MSK SCRAM credentials have no rotation Lambda; rotate by writing a new secret version and restarting the clients (docs/operations.md)
  name       = "AmazonMSK_${var.name}_tributary"
  kms_key_id = var.kms_key_arn
  tags       = var.tags
}

resource "aws_msk_scram_secret_association" "this" {
  cluster_arn     = aws_msk_cluster.this.arn
  secret_arn_list = [aws_secretsmanager_secret.scram.arn]
}
