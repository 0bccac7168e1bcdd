# Where alerts go (the monitors' SNS sink; CloudWatch alarms may publish too), how long training logs are
# kept, and the Hugging Face token's secret.

resource "aws_sns_topic" "alerts" {
  name              = "${var.name}-alerts"
  kms_master_key_id = aws_kms_key.launcher.arn
}

resource "aws_sns_topic_policy" "alerts" {
  arn    = aws_sns_topic.alerts.arn
  policy = data.aws_iam_policy_document.alerts.json
}

data "aws_iam_policy_document" "alerts" {
  statement {
    sid       = "AccountPublishesAndSubscribes"
    actions   = ["sns:Publish", "sns:Subscribe", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.alerts.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsOfThisAccountPublish"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alerts.arn]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_cloudwatch_log_group" "training" {
  name              = local.training_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.launcher.arn
}

resource "aws_secretsmanager_secret" "hf_token" {
  # checkov:skip=CKV2_AWS_57: a Hugging Face token is rotated on huggingface.co, which no rotation Lambda can reach; put the new value with put-secret-value
  name                    = "${var.name}/hf-token"
  description             = "Hugging Face Hub token for gated base models; set the value with aws secretsmanager put-secret-value"
  kms_key_id              = aws_kms_key.launcher.arn
  recovery_window_in_days = var.secret_recovery_days
}
