terraform {
  required_version = ">= 1.7" # mock_provider in `terraform test`

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "managed-by" = "terraform", "launcher" = var.name }, var.tags)
  }
}
