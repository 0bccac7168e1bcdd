terraform {
  required_version = ">= 1.7"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region

  default_labels = merge({ "managed-by" = "terraform", "launcher" = var.name }, var.labels)
}
