variable "project_id" {
  description = "The Google Cloud project Runway runs in."
  type        = string
}

variable "region" {
  description = "The region of the Cloud Run services and jobs and of the bucket."
  type        = string
  default     = "us-central1"
}

variable "bucket_name" {
  description = "The GCS bucket for envelopes, input files and outputs (globally unique)."
  type        = string
}

variable "run_retention_days" {
  description = "Objects under runs/ older than this are deleted by the bucket's lifecycle rule."
  type        = number
  default     = 30
}

variable "runway_image" {
  description = "The runway image (runway-launcher, runway-callback), pinned by digest: REGISTRY/runway@sha256:..."
  type        = string
  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.runway_image))
    error_message = "runway_image must be pinned by digest (name@sha256:<64 hex>)."
  }
}

variable "validators" {
  description = "One Cloud Run Job per validator: its image (pinned by digest), type and version as the registry names them, resources and task timeout."
  type = map(object({
    type            = string
    version         = string
    image           = string
    cpu             = optional(string, "2")
    memory          = optional(string, "4Gi")
    timeout_seconds = optional(number, 3600)
    max_concurrency = optional(number)
    max_attempts    = optional(number, 3)
  }))
  validation {
    condition     = alltrue([for v in values(var.validators) : can(regex("@sha256:[0-9a-f]{64}$", v.image))])
    error_message = "Every validator image must be pinned by digest (name@sha256:<64 hex>)."
  }
  validation {
    condition     = alltrue([for k in keys(var.validators) : can(regex("^[a-z][a-z0-9-]{0,20}$", k))])
    error_message = "Validator ids must be 1-21 of a-z, 0-9 and '-', starting with a letter (they name service accounts and jobs)."
  }
}

variable "database_url" {
  description = "The run store's PostgreSQL URL (postgres://user:password@host/db), kept in Secret Manager."
  type        = string
  sensitive   = true
}

variable "callback_nonce_key" {
  description = "The callback nonce key: base64 of at least 32 random bytes (openssl rand -base64 32), kept in Secret Manager."
  type        = string
  sensitive   = true
}

variable "web_app_service_accounts" {
  description = "Service accounts of the web app: they may invoke the launcher and their Google ID tokens are accepted by its API."
  type        = list(string)
  default     = []
}

variable "launcher_public" {
  description = "Let anyone reach the launcher's URL (callers with API keys from outside Google Cloud). The API still requires an API key or an allow-listed ID token."
  type        = bool
  default     = false
}

variable "network" {
  description = "The VPC network jobs and services use for egress (Direct VPC egress), so that jobs reach the internal-only callback service."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "The subnetwork of that network (with Private Google Access on)."
  type        = string
  default     = "default"
}

variable "runs_per_minute" {
  description = "The launcher's client-side limit on jobs.run calls per minute (below the project's quota)."
  type        = number
  default     = 60
}
