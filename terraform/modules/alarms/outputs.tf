output "topic_arn" {
  description = "The SNS topic alarms are sent to (also used by Alertmanager's SNS receiver)."
  value       = aws_sns_topic.alarms.arn
}
