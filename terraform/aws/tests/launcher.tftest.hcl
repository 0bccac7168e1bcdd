# `terraform test` with a mocked provider: no AWS account, no network (tests/test_infra_terraform.py runs it).
# What is asserted is what a reviewer would check by hand: encryption, versioning, no public access,
# TLS only, immutable scanned images, and a role whose policy names no wildcard action and no "*"
# resource except for the two calls that have none.

mock_provider "aws" {
  # A mocked data source returns random strings; these need real shapes.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  # Resources whose ARN another resource validates.
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::launcher-123456789012-eu-west-1" }
  }
  mock_resource "aws_ecr_repository" {
    defaults = { arn = "arn:aws:ecr:eu-west-1:123456789012:repository/launcher" }
  }
  mock_resource "aws_sns_topic" {
    defaults = { arn = "arn:aws:sns:eu-west-1:123456789012:launcher-alerts" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:launcher/hf-token-AbCdEf" }
  }
}

run "the_resources_are_locked_down" {
  command = apply

  assert {
    condition     = aws_s3_bucket.artifacts.bucket == "launcher-123456789012-eu-west-1"
    error_message = "the bucket is named NAME-ACCOUNT-REGION"
  }
  assert {
    condition     = aws_s3_bucket_versioning.artifacts.versioning_configuration[0].status == "Enabled"
    error_message = "the bucket must be versioned"
  }
  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.artifacts.block_public_acls,
      aws_s3_bucket_public_access_block.artifacts.block_public_policy,
      aws_s3_bucket_public_access_block.artifacts.ignore_public_acls,
      aws_s3_bucket_public_access_block.artifacts.restrict_public_buckets,
    ])
    error_message = "every public access must be blocked"
  }
  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.artifacts.rule).apply_server_side_encryption_by_default).kms_master_key_id == aws_kms_key.launcher.arn
    error_message = "the bucket must be encrypted with the launcher's key"
  }
  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.tls_only.statement :
    s.effect == "Deny" && anytrue([for c in s.condition : c.variable == "aws:SecureTransport" && c.values == tolist(["false"])])])
    error_message = "the bucket policy must deny requests without TLS"
  }
  assert {
    condition     = toset([for r in aws_s3_bucket_lifecycle_configuration.artifacts.rule : r.id]) == toset(["rotated-checkpoints", "captures"])
    error_message = "lifecycle rules for checkpoints and captures"
  }
  assert {
    condition     = aws_ecr_repository.images.image_tag_mutability == "IMMUTABLE" && aws_ecr_repository.images.image_scanning_configuration[0].scan_on_push
    error_message = "image tags are immutable and scanned on push"
  }
  assert {
    condition     = aws_sns_topic.alerts.kms_master_key_id == aws_kms_key.launcher.arn
    error_message = "the alerts topic must be encrypted"
  }
  assert {
    condition     = aws_cloudwatch_log_group.training.retention_in_days == 365 && aws_cloudwatch_log_group.training.name == "/aws/sagemaker/TrainingJobs"
    error_message = "the training log group keeps logs for var.log_retention_days"
  }
  assert {
    condition     = aws_kms_key.launcher.enable_key_rotation
    error_message = "the key rotates"
  }
}

run "the_role_allows_no_wildcards" {
  command = apply

  assert {
    condition     = alltrue(flatten([for s in data.aws_iam_policy_document.sagemaker.statement : [for a in s.actions : !strcontains(a, "*")]]))
    error_message = "no statement of the execution role may allow a wildcard action"
  }
  assert {
    condition     = toset(flatten([for s in data.aws_iam_policy_document.sagemaker.statement : s.actions if contains(s.resources, "*")])) == toset(["ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"])
    error_message = "only ecr:GetAuthorizationToken and cloudwatch:PutMetricData, which name no resource, may have \"*\""
  }
  assert {
    condition = alltrue([for s in data.aws_iam_policy_document.sagemaker.statement :
    alltrue([for r in s.resources : !startswith(r, "arn:") || !endswith(r, ":::*")])])
    error_message = "no S3 statement may name every bucket"
  }
  assert {
    condition     = toset(one([for s in data.aws_iam_policy_document.sagemaker.statement : s.resources if contains(s.actions, "s3:PutObject")])) == toset(["${aws_s3_bucket.artifacts.arn}/launcher/*"])
    error_message = "the role writes only under the launcher's prefix"
  }
  assert {
    condition     = anytrue([for c in one(data.aws_iam_policy_document.sagemaker_trust.statement).condition : c.variable == "aws:SourceAccount"])
    error_message = "only SageMaker acting for this account may assume the role"
  }
}

run "a_name_aws_would_refuse_is_refused_first" {
  command = plan
  variables {
    name = "Launcher_Team"
  }
  expect_failures = [var.name]
}

run "captures_outlive_their_move_to_infrequent_access" {
  command = plan
  variables {
    capture_days = 20
  }
  expect_failures = [var.capture_days]
}
