# What AWS itself can see going wrong, paged to one SNS topic: a shard whose
# logical replication slot holds back WAL (the CDC reader is stuck or gone),
# a shard or broker running out of disk, a shard saturated. What only
# tributary can see (freshness per table, consumer lag, dead letters, a lost
# lease) is alerted on by Prometheus from the processes' /metrics
# (deploy/prometheus/rules).

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = var.kms_key_arn
  tags              = var.tags
}

resource "aws_sns_topic_subscription" "email" {
  for_each  = toset(var.alarm_emails)
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

# Bytes of WAL the oldest replication slot holds back. The CDC reader
# confirms every few seconds and heartbeats keep idle slots moving, so more
# than this for five minutes means the reader is not confirming.
resource "aws_cloudwatch_metric_alarm" "slot_lag" {
  for_each            = var.db_instance_ids
  alarm_name          = "${each.value}-replication-slot-lag"
  alarm_description   = "${each.key}: the oldest logical replication slot holds back more than ${var.slot_lag_bytes} bytes of WAL (is the CDC reader running? docs/operations.md)"
  namespace           = "AWS/RDS"
  metric_name         = "OldestReplicationSlotLag"
  dimensions          = { DBInstanceIdentifier = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = var.slot_lag_bytes
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "db_storage" {
  for_each            = var.db_instance_ids
  alarm_name          = "${each.value}-free-storage"
  alarm_description   = "${each.key}: less than ${var.free_storage_bytes} bytes of storage left"
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  dimensions          = { DBInstanceIdentifier = each.value }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 2
  threshold           = var.free_storage_bytes
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "db_cpu" {
  for_each            = var.db_instance_ids
  alarm_name          = "${each.value}-cpu"
  alarm_description   = "${each.key}: CPU above 80% for 15 minutes (time to add a shard? docs/capacity.md)"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = each.value }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "broker_disk" {
  count               = var.msk_broker_count
  alarm_name          = "${var.msk_cluster_name}-broker-${count.index + 1}-disk"
  alarm_description   = "MSK broker ${count.index + 1}: data log disk above ${var.broker_disk_percent}% (shorten retention or grow the volume)"
  namespace           = "AWS/Kafka"
  metric_name         = "KafkaDataLogsDiskUsed"
  dimensions          = { "Cluster Name" = var.msk_cluster_name, "Broker ID" = tostring(count.index + 1) }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  threshold           = var.broker_disk_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = var.tags
}
