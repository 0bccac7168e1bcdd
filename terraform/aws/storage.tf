# The artifacts bucket: staged data, the source bundles, job outputs and checkpoints, endpoint model data
# and captured traffic, all under var.prefix (the launcher's layout: data/, bundles/, jobs/, models/,
# capture/). Encrypted with the key, versioned, never public, reachable over TLS only.

resource "aws_s3_bucket" "artifacts" {
  # checkov:skip=CKV_AWS_18: access logging needs a second bucket in a logging account; set it up there (server access logs are per-organisation policy)
  # checkov:skip=CKV_AWS_144: cross-region replication doubles storage of reproducible artifacts; a team that needs it adds a replica bucket
  # checkov:skip=CKV2_AWS_62: nothing consumes bucket events; the launcher polls
  bucket        = local.bucket
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    bucket_key_enabled = true
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.launcher.arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  # Checkpoints: training keeps its newest keep_checkpoints and deletes the older ones, which on a
  # versioned bucket stay as noncurrent versions; this rule is what actually frees them.
  rule {
    id     = "rotated-checkpoints"
    status = "Enabled"
    filter {
      prefix = "" # every object (what S3 itself answers for an empty filter)
    }
    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Captured endpoint traffic: read by the monitors within days, kept for audits, then expired.
  rule {
    id     = "captures"
    status = "Enabled"
    filter {
      prefix = "${var.prefix}/capture/"
    }
    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }
    expiration {
      days = var.capture_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.artifacts]
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = data.aws_iam_policy_document.tls_only.json

  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyPlainHttp"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.artifacts.arn,
      "${aws_s3_bucket.artifacts.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
