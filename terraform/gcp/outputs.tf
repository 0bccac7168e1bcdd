# What `launcher config from-terraform` reads (terraform output -json): these names are its contract.

output "gcp_project" {
  description = "The project of every resource."
  value       = var.project
}

output "gcp_region" {
  description = "The region of the bucket, the repository, jobs and endpoints."
  value       = var.region
}

output "artifacts_bucket" {
  description = "The bucket for staged data, bundles, outputs, checkpoints, model data and captures."
  value       = google_storage_bucket.artifacts.name
}

output "artifacts_prefix" {
  description = "The object prefix the launcher writes under."
  value       = var.prefix
}

output "vertex_service_account" {
  description = "The service account jobs and endpoints run as (vertex.service_account)."
  value       = google_service_account.vertex.email
}

output "artifact_registry_repository" {
  description = "Where `launcher image push` puts the training and serving images."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "alerts_topic" {
  description = "The Pub/Sub topic the monitors' alerts go to."
  value       = google_pubsub_topic.alerts.id
}

output "hf_token_secret" {
  description = "The Secret Manager secret for the Hugging Face token; vertex.hf_token_secret takes its version, SECRET/versions/latest."
  value       = google_secret_manager_secret.hf_token.id
}

output "project_number" {
  description = "The project's number (Vertex AI names resources with it)."
  value       = data.google_project.current.number
}
