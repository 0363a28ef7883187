terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }
  # State in S3 with locking; the bucket and table are made once by hand
  # (docs/operations.md), before the first `terraform init`.
  backend "s3" {
    bucket         = "tributary-terraform-state"
    key            = "prod/terraform.tfstate"
    region         = "eu-west-1"
    encrypt        = true
    dynamodb_table = "tributary-terraform-locks"
  }
}
