variable "region" {
  description = "The AWS region of every resource (the launcher profile's sagemaker.region)."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource's name: the bucket is NAME-ACCOUNT-REGION, the role NAME-sagemaker."
  type        = string
  default     = "launcher"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}[a-z0-9]$", var.name))
    error_message = "name must be 3-22 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "prefix" {
  description = "The key prefix the launcher writes under in the bucket (the spec's sagemaker.prefix); the role may read and write only there."
  type        = string
  default     = "launcher"
}

variable "checkpoint_version_days" {
  description = "Days a replaced or deleted object version is kept: training keeps only its newest checkpoints, and the older ones it deletes linger as noncurrent versions for this long."
  type        = number
  default     = 14
}

variable "capture_days" {
  description = "Days captured endpoint traffic (PREFIX/capture/) is kept; it moves to STANDARD_IA after 30 days."
  type        = number
  default     = 180

  validation {
    condition     = var.capture_days > 30
    error_message = "capture_days must be more than 30 (captures move to STANDARD_IA at 30 days)."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the training jobs' logs."
  type        = number
  default     = 365
}

variable "secret_recovery_days" {
  description = "Days a deleted Hugging Face token secret can be restored (0 deletes it at once)."
  type        = number
  default     = 7
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects and the repository with its images."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
