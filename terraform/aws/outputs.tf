# What `launcher config from-terraform` reads (terraform output -json): these names are its contract.

output "aws_region" {
  description = "The region of every resource."
  value       = local.region
}

output "artifacts_bucket" {
  description = "The bucket for staged data, bundles, outputs, checkpoints, model data and captures."
  value       = aws_s3_bucket.artifacts.bucket
}

output "artifacts_prefix" {
  description = "The key prefix the execution role may use in the bucket."
  value       = var.prefix
}

output "sagemaker_role_arn" {
  description = "The SageMaker execution role."
  value       = aws_iam_role.sagemaker.arn
}

output "ecr_repository_url" {
  description = "Where `launcher image push` puts the training and serving images."
  value       = aws_ecr_repository.images.repository_url
}

output "alerts_topic_arn" {
  description = "The SNS topic the monitors' alerts go to."
  value       = aws_sns_topic.alerts.arn
}

output "hf_token_secret_arn" {
  description = "The Secrets Manager secret for the Hugging Face token (sagemaker.hf_token_secret); its value is set outside terraform."
  value       = aws_secretsmanager_secret.hf_token.arn
}

output "kms_key_arn" {
  description = "The key that encrypts the bucket, repository, topic, logs and secret."
  value       = aws_kms_key.launcher.arn
}

output "training_log_group" {
  description = "The CloudWatch log group of the training jobs."
  value       = aws_cloudwatch_log_group.training.name
}
