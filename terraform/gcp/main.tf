# What a team needs before its first Vertex AI job: the artifacts bucket, the image repository, the service
# account jobs and endpoints run as (with only the roles they use, each on its resource where Google allows
# it), the alerts topic and the Hugging Face token's secret (its value is added outside terraform).
# `launcher config from-terraform .` turns the outputs into the launcher profile.

data "google_project" "current" {
  project_id = var.project
}

locals {
  bucket = "${var.name}-${var.project}"
}

resource "google_project_service" "apis" {
  for_each = toset([
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "pubsub.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

resource "google_storage_bucket" "artifacts" {
  name                        = local.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  versioning {
    enabled = true
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == null ? [] : [var.access_log_bucket]
    content {
      log_bucket = logging.value
    }
  }

  # Checkpoints: training keeps its newest and deletes the older ones, which stay as noncurrent versions.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.checkpoint_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Captured endpoint traffic: read by the monitors within days, kept for audits, then deleted.
  lifecycle_rule {
    condition {
      age            = 30
      matches_prefix = ["${var.prefix}/capture/"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }
  lifecycle_rule {
    condition {
      age            = var.capture_days
      matches_prefix = ["${var.prefix}/capture/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84: the images hold code and public libraries, no data; Google encrypts them at rest, and a customer key would need a key ring and grants to Artifact Registry's service agent
  repository_id = var.name
  location      = var.region
  format        = "DOCKER"
  description   = "Training and serving images of ${var.name} (tags are content hashes)"

  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "vertex" {
  account_id   = "${var.name}-vertex"
  display_name = "Vertex AI jobs and endpoints of ${var.name}"
}

# The job reads its data, code and checkpoints and writes outputs; the endpoint reads the model and writes
# captures: objects in this bucket only.
resource "google_storage_bucket_iam_member" "vertex_objects" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectUser"
  member = google_service_account.vertex.member
}

resource "google_artifact_registry_repository_iam_member" "vertex_pulls" {
  repository = google_artifact_registry_repository.images.name
  location   = google_artifact_registry_repository.images.location
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.vertex.member
}

resource "google_secret_manager_secret_iam_member" "vertex_reads_token" {
  secret_id = google_secret_manager_secret.hf_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.vertex.member
}

# Logs and metrics have no narrower resource than the project.
resource "google_project_iam_member" "vertex_logs" {
  project = var.project
  role    = "roles/logging.logWriter"
  member  = google_service_account.vertex.member
}

resource "google_project_iam_member" "vertex_metrics" {
  project = var.project
  role    = "roles/monitoring.metricWriter"
  member  = google_service_account.vertex.member
}

resource "google_pubsub_topic" "alerts" {
  # checkov:skip=CKV_GCP_83: a customer-managed key for a topic of alert summaries is not worth a key ring; Google encrypts it at rest
  name                       = "${var.name}-alerts"
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "hf_token" {
  secret_id = "${var.name}-hf-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
