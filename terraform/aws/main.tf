# What a team needs before its first SageMaker job, the same way in every account: one KMS key that
# encrypts everything below, the artifacts bucket, the image repository, the SageMaker execution role,
# the alerts topic, the training logs' retention and the Hugging Face token's secret (its value is set
# outside terraform, so it never lands in the state). `launcher config from-terraform .` turns the
# outputs into the launcher profile.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.name
  bucket    = "${var.name}-${local.account}-${local.region}"
  # Where SageMaker writes a training job's logs; an endpoint's go to /aws/sagemaker/Endpoints/NAME.
  training_log_group = "/aws/sagemaker/TrainingJobs"
  log_group_arn      = "arn:${local.partition}:logs:${local.region}:${local.account}:log-group"
}

resource "aws_kms_key" "launcher" {
  description             = "${var.name}: the artifacts bucket, image repository, alerts topic, logs and secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "launcher" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.launcher.key_id
}

data "aws_iam_policy_document" "key" {
  # checkov:skip=CKV_AWS_109: a key policy, not an IAM policy: its "*" resource is this key alone, and the account must administer its own key
  # checkov:skip=CKV_AWS_111: a key policy, not an IAM policy: its "*" resource is this key alone
  # checkov:skip=CKV_AWS_356: a key policy, not an IAM policy: "*" is the only resource a key policy may name (this key)
  # In a key policy "*" is this key. The account's IAM policies decide who else may use it (the
  # execution role's do, below); two services get exactly what they need of it.
  statement {
    sid       = "AccountAdministersTheKey"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptsTheLaunchersLogGroups"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["${local.log_group_arn}:/aws/sagemaker/*"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublishToTheEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
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
