variable "project" {
  description = "The Google Cloud project (the launcher profile's vertex.project)."
  type        = string
}

variable "region" {
  description = "The region of the bucket, the repository and the Vertex AI jobs and endpoints."
  type        = string
  default     = "us-central1"
}

variable "name" {
  description = "Prefix of every resource's name: the bucket is NAME-PROJECT, the service account NAME-vertex."
  type        = string
  default     = "launcher"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}[a-z0-9]$", var.name))
    error_message = "name must be 3-22 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "prefix" {
  description = "The object prefix the launcher writes under in the bucket (the spec's vertex.prefix)."
  type        = string
  default     = "launcher"
}

variable "checkpoint_version_days" {
  description = "Days a replaced or deleted object version is kept (training deletes its older checkpoints)."
  type        = number
  default     = 14
}

variable "capture_days" {
  description = "Days captured endpoint traffic (PREFIX/capture/) is kept; it moves to NEARLINE after 30 days."
  type        = number
  default     = 180
}

variable "access_log_bucket" {
  description = "A bucket that receives the artifacts bucket's usage logs (an existing one: a log bucket logs nothing itself)."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects."
  type        = bool
  default     = false
}

variable "labels" {
  description = "Labels added to every resource."
  type        = map(string)
  default     = {}
}
