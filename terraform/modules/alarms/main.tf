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

# Per database instance, three alarms:
# - slot-lag: bytes of WAL the oldest replication slot holds back. The CDC
#   reader confirms every few seconds and heartbeats keep idle slots moving,
#   so more than this for five minutes means the reader is not confirming;
# - free-storage: the instance is running out of disk;
# - cpu: busy for 15 minutes (time to add a shard? docs/capacity.md).
locals {
  db_alarms = {
    "replication-slot-lag" = {
      metric     = "OldestReplicationSlotLag"
      statistic  = "Maximum"
      period     = 60
      periods    = 5
      threshold  = var.slot_lag_bytes
      comparison = "GreaterThanThreshold"
      missing    = "breaching"
      says       = "the oldest logical replication slot holds back more than ${var.slot_lag_bytes} bytes of WAL (is the CDC reader running? docs/operations.md)"
    }
    "free-storage" = {
      metric     = "FreeStorageSpace"
      statistic  = "Minimum"
      period     = 300
      periods    = 2
      threshold  = var.free_storage_bytes
      comparison = "LessThanThreshold"
      missing    = "breaching"
      says       = "less than ${var.free_storage_bytes} bytes of storage left"
    }
    "cpu" = {
      metric     = "CPUUtilization"
      statistic  = "Average"
      period     = 300
      periods    = 3
      threshold  = 80
      comparison = "GreaterThanThreshold"
      missing    = "missing"
      says       = "CPU above 80% for 15 minutes (time to add a shard? docs/capacity.md)"
    }
  }
  db_alarm_pairs = {
    for pair in setproduct(keys(var.db_instance_ids), keys(local.db_alarms)) :
    "${pair[0]}/${pair[1]}" => { db = pair[0], alarm = pair[1] }
  }
}

resource "aws_cloudwatch_metric_alarm" "db" {
  for_each            = local.db_alarm_pairs
  alarm_name          = "${var.db_instance_ids[each.value.db]}-${each.value.alarm}"
  alarm_description   = "${each.value.db}: ${local.db_alarms[each.value.alarm].says}"
  namespace           = "AWS/RDS"
  metric_name         = local.db_alarms[each.value.alarm].metric
  dimensions          = { DBInstanceIdentifier = var.db_instance_ids[each.value.db] }
  statistic           = local.db_alarms[each.value.alarm].statistic
  period              = local.db_alarms[each.value.alarm].period
  evaluation_periods  = local.db_alarms[each.value.alarm].periods
  threshold           = local.db_alarms[each.value.alarm].threshold
  comparison_operator = local.db_alarms[each.value.alarm].comparison
  treat_missing_data  = local.db_alarms[each.value.alarm].missing
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
