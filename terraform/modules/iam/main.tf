# One IAM role per tributary process, assumed by that process's Kubernetes
# service account only (IRSA: deploy/k8s/overlays/prod/irsa.yaml), with
# what that process touches and nothing more:
#
#   process    lake (S3)                                   secrets
#   oltp       none                                        config
#   cdc        none                                        config
#   ingest     read/write bronze/, silver/                 config
#   workflows  read all; write gold/; maintenance deletes  config
#              in bronze/, silver/, gold/
#   fraud      read all; write gold/, _checkpoints/live/   config
#   activity   read all; write gold/, _checkpoints/live/   config
#   sql        read all                                    config
#
# Every process reads the one configuration secret; each S3 write is to the
# layers it owns, so a bug or a stolen token in the SQL server cannot touch
# a table, and the ingester cannot rewrite gold.

locals {
  lake = "${var.bucket_arn}/${var.prefix}"
  # Writable prefixes per process.
  writes = {
    oltp      = []
    cdc       = []
    ingest    = ["bronze/", "silver/"]
    workflows = ["bronze/", "silver/", "gold/"]
    fraud     = ["gold/", "_checkpoints/live/"]
    activity  = ["gold/", "_checkpoints/live/"]
    sql       = []
  }
  # Whether a process reads the lake at all.
  reads = {
    oltp      = false
    cdc       = false
    ingest    = true
    workflows = true
    fraud     = true
    activity  = true
    sql       = true
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = local.writes
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:tributary-${each.key}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "service" {
  for_each           = local.writes
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
  tags               = merge(var.tags, { "tributary/process" = each.key })
}

data "aws_iam_policy_document" "service" {
  for_each = local.writes

  statement {
    sid       = "ReadConfiguration"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.config_secret_arn]
  }

  statement {
    sid       = "UseTheKey"
    actions   = concat(["kms:Decrypt"], length(each.value) > 0 ? ["kms:GenerateDataKey"] : [])
    resources = [var.kms_key_arn]
  }

  dynamic "statement" {
    for_each = local.reads[each.key] ? [1] : []
    content {
      sid       = "ListTheLake"
      actions   = ["s3:ListBucket"]
      resources = [var.bucket_arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${var.prefix}*"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.reads[each.key] ? [1] : []
    content {
      sid       = "ReadTheLake"
      actions   = ["s3:GetObject"]
      resources = ["${local.lake}*"]
    }
  }

  dynamic "statement" {
    for_each = length(each.value) > 0 ? [1] : []
    content {
      sid       = "WriteOwnLayers"
      actions   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      resources = [for p in each.value : "${local.lake}${p}*"]
    }
  }
}

resource "aws_iam_role_policy" "service" {
  for_each = local.writes
  name     = "tributary-${each.key}"
  role     = aws_iam_role.service[each.key].id
  policy   = data.aws_iam_policy_document.service[each.key].json
}
