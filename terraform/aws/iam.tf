# The SageMaker execution role: what a training job, an endpoint and its data capture do with the role,
# on these resources only. A user who submits jobs needs iam:PassRole on it besides their own
# sagemaker:* permissions.

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name}-sagemaker"
  description        = "SageMaker training jobs and endpoints of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_trust.json
}

data "aws_iam_policy_document" "sagemaker_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
    condition { # only SageMaker acting for this account (the confused-deputy guard)
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "${var.name}-sagemaker"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}

data "aws_iam_policy_document" "sagemaker" {
  # Channels, the source bundle and checkpoints are listed and read; outputs, checkpoints, endpoint
  # model data and captured traffic are written. Only under the launcher's prefix.
  statement {
    sid       = "ListTheLaunchersPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.prefix, "${var.prefix}/*"]
    }
  }

  statement {
    sid       = "ReadAndWriteTheLaunchersObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.artifacts.arn}/${var.prefix}/*"]
  }

  statement {
    sid       = "UseTheKeyForTheBucketAndTheSecret"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.launcher.arn]
  }

  statement {
    sid       = "PullTheLaunchersImages"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [aws_ecr_repository.images.arn]
  }

  statement {
    sid       = "LogInToEcr" # an account-wide call by design: it has no resource to name
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid     = "WriteJobAndEndpointLogs"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [
      "${local.log_group_arn}:${local.training_log_group}:*",
      "${local.log_group_arn}:/aws/sagemaker/Endpoints/*",
    ]
  }

  statement {
    sid       = "CreateEndpointLogGroups" # one per endpoint, named by SageMaker
    actions   = ["logs:CreateLogGroup"]
    resources = ["${local.log_group_arn}:/aws/sagemaker/Endpoints/*"]
  }

  statement {
    sid       = "PublishSageMakerMetrics" # PutMetricData has no resource; the namespace is the bound
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/*"]
    }
  }

  statement {
    sid       = "ReadTheHubToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.hf_token.arn]
  }
}
