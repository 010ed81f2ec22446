# Runway on Google Cloud: the bucket, one service account per role (launcher, callback, each
# validator's runtime), the launcher and callback Cloud Run services, one Cloud Run Job per
# validator, the secrets, and IAM bound on each resource (no project-wide grants).

data "google_project" "this" {}

locals {
  # Cloud Run service URLs are known before the services exist.
  launcher_url = "https://runway-launcher-${data.google_project.this.number}.${var.region}.run.app"
  callback_url = "https://runway-callback-${data.google_project.this.number}.${var.region}.run.app"
  job_names    = { for id, v in var.validators : id => "projects/${var.project_id}/locations/${var.region}/jobs/runway-${id}" }

  # The launcher's validator registry (RUNWAY_VALIDATORS_FILE).
  validators_json = jsonencode({
    validators = [for id, v in var.validators : merge({
      id              = id
      type            = v.type
      version         = v.version
      backend         = "cloud_run"
      job_name        = local.job_names[id]
      service_account = google_service_account.validator[id].email
      image_policy    = "digest"
      timeout_seconds = v.timeout_seconds
      max_attempts    = v.max_attempts
    }, v.max_concurrency == null ? {} : { max_concurrency = v.max_concurrency })]
  })

  google_issuer = "https://accounts.google.com=https://www.googleapis.com/oauth2/v3/certs"
}

resource "google_project_service" "apis" {
  for_each           = toset(["run.googleapis.com", "secretmanager.googleapis.com", "storage.googleapis.com", "iamcredentials.googleapis.com", "sts.googleapis.com"])
  service            = each.value
  disable_on_destroy = false
}

# --- Storage ---------------------------------------------------------------------------------

resource "google_storage_bucket" "runs" {
  name                        = var.bucket_name
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age            = var.run_retention_days
      matches_prefix = ["runs/"]
    }
    action {
      type = "Delete"
    }
  }
}

# --- Identities ------------------------------------------------------------------------------

resource "google_service_account" "launcher" {
  account_id   = "runway-launcher"
  display_name = "Runway launcher"
}

resource "google_service_account" "callback" {
  account_id   = "runway-callback"
  display_name = "Runway callback service"
}

resource "google_service_account" "validator" {
  for_each     = var.validators
  account_id   = "runway-v-${each.key}"
  display_name = "Runway validator runtime: ${each.key}"
}

# --- Secrets ---------------------------------------------------------------------------------

resource "google_secret_manager_secret" "database_url" {
  secret_id = "runway-database-url"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "database_url" {
  secret      = google_secret_manager_secret.database_url.id
  secret_data = var.database_url
}

resource "google_secret_manager_secret" "nonce_key" {
  secret_id = "runway-callback-nonce-key"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "nonce_key" {
  secret      = google_secret_manager_secret.nonce_key.id
  secret_data = var.callback_nonce_key
}

# Not secret, but Secret Manager is how a Cloud Run service gets a file.
resource "google_secret_manager_secret" "validators" {
  secret_id = "runway-validators"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "validators" {
  secret      = google_secret_manager_secret.validators.id
  secret_data = local.validators_json
}

resource "google_secret_manager_secret_iam_member" "launcher" {
  for_each  = { db = google_secret_manager_secret.database_url.id, nonce = google_secret_manager_secret.nonce_key.id, validators = google_secret_manager_secret.validators.id }
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.launcher.email}"
}

resource "google_secret_manager_secret_iam_member" "callback" {
  secret_id = google_secret_manager_secret.database_url.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.callback.email}"
}

# --- Bucket access ---------------------------------------------------------------------------

# The launcher writes envelopes and input files, reads outputs, and removes the uploads of
# requests it refuses.
resource "google_storage_bucket_iam_member" "launcher" {
  bucket = google_storage_bucket.runs.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.launcher.email}"
}

# The callback service reads envelopes and outputs, and renews validator jobs' attempt-scoped
# tokens: a downscoped token can do no more than the token it is exchanged for, so the callback
# service can create objects too (never delete or replace them).
resource "google_storage_bucket_iam_member" "callback" {
  bucket = google_storage_bucket.runs.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.callback.email}"
}

resource "google_storage_bucket_iam_member" "callback_create" {
  bucket = google_storage_bucket.runs.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.callback.email}"
}

# Validator jobs get no bucket access of their own: each attempt carries a token downscoped to
# read its run's files and its own folder and to create objects in its folder
# (RUNWAY_GCS_ATTEMPT_TOKENS=required, the default).

# --- Validator jobs --------------------------------------------------------------------------

resource "google_cloud_run_v2_job" "validator" {
  for_each            = var.validators
  name                = "runway-${each.key}"
  location            = var.region
  deletion_protection = false

  template {
    task_count = 1
    template {
      service_account = google_service_account.validator[each.key].email
      timeout         = "${each.value.timeout_seconds}s"
      max_retries     = 0
      containers {
        image = each.value.image
        resources {
          limits = {
            cpu    = each.value.cpu
            memory = each.value.memory
          }
        }
        env {
          name  = "DEPLOYMENT_TARGET"
          value = "gcp"
        }
      }
      # All egress through the VPC, so the internal-only callback service is reachable.
      vpc_access {
        network_interfaces {
          network    = var.network
          subnetwork = var.subnetwork
        }
        egress = "ALL_TRAFFIC"
      }
    }
  }
  depends_on = [google_project_service.apis]
}

# Exactly what the Cloud Run backend calls, and nothing else.
resource "google_project_iam_custom_role" "job_launcher" {
  role_id     = "runwayJobLauncher"
  title       = "Runway job launcher"
  description = "Run validator jobs with per-execution overrides, and observe and cancel their executions."
  permissions = [
    "run.executions.cancel",
    "run.executions.get",
    "run.executions.list",
    "run.jobs.get",
    "run.jobs.run",
    "run.jobs.runWithOverrides",
  ]
}

# Granted on each job (its executions inherit it), never on the project.
resource "google_cloud_run_v2_job_iam_member" "launcher" {
  for_each = var.validators
  name     = google_cloud_run_v2_job.validator[each.key].name
  location = var.region
  role     = google_project_iam_custom_role.job_launcher.id
  member   = "serviceAccount:${google_service_account.launcher.email}"
}

# --- Services --------------------------------------------------------------------------------

resource "google_cloud_run_v2_service" "launcher" {
  name                = "runway-launcher"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account = google_service_account.launcher.email
    # The dispatcher and the reconciler run inside the launcher: one instance, CPU always on.
    scaling {
      min_instance_count = 1
      max_instance_count = 1
    }
    volumes {
      name = "validators"
      secret {
        secret = google_secret_manager_secret.validators.secret_id
        items {
          version = "latest"
          path    = "validators.json"
        }
      }
    }
    containers {
      image   = var.runway_image
      command = ["runway-launcher"]
      ports {
        container_port = 8080
      }
      resources {
        cpu_idle = false
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
      }
      volume_mounts {
        name       = "validators"
        mount_path = "/etc/runway"
      }
      env {
        name  = "RUNWAY_LAUNCHER_ADDR"
        value = "0.0.0.0:8080"
      }
      env {
        name  = "RUNWAY_API_AUTH"
        value = "required"
      }
      env {
        name  = "RUNWAY_API_AUDIENCE"
        value = local.launcher_url
      }
      dynamic "env" {
        for_each = length(var.web_app_service_accounts) > 0 ? [join(",", var.web_app_service_accounts)] : []
        content {
          name  = "RUNWAY_API_ALLOWED_CALLERS"
          value = env.value
        }
      }
      env {
        name  = "RUNWAY_VALIDATORS_FILE"
        value = "/etc/runway/validators.json"
      }
      env {
        name  = "RUNWAY_STORAGE_URI"
        value = "gs://${google_storage_bucket.runs.name}"
      }
      env {
        name  = "RUNWAY_CALLBACK_URL"
        value = "${local.callback_url}/v1/callbacks"
      }
      env {
        name  = "RUNWAY_CLOUD_RUN_ENDPOINT"
        value = "https://${var.region}-run.googleapis.com"
      }
      env {
        name  = "RUNWAY_CLOUD_RUN_RUNS_PER_MINUTE"
        value = tostring(var.runs_per_minute)
      }
      env {
        name  = "RUNWAY_DATA_DIR"
        value = "/tmp/runway"
      }
      env {
        name  = "RUNWAY_LOG_FORMAT"
        value = "json"
      }
      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }
      env {
        name = "RUNWAY_DATABASE_URL"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.database_url.secret_id
            version = "latest"
          }
        }
      }
      env {
        name = "RUNWAY_CALLBACK_NONCE_KEY"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.nonce_key.secret_id
            version = "latest"
          }
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.launcher, google_secret_manager_secret_version.validators]
}

resource "google_cloud_run_v2_service_iam_member" "launcher_invokers" {
  for_each = toset(var.launcher_public ? ["allUsers"] : [for sa in var.web_app_service_accounts : "serviceAccount:${sa}"])
  name     = google_cloud_run_v2_service.launcher.name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_v2_service" "callback" {
  name                = "runway-callback"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account = google_service_account.callback.email
    containers {
      image   = var.runway_image
      command = ["runway-callback"]
      ports {
        container_port = 8080
      }
      env {
        name  = "RUNWAY_CALLBACK_ADDR"
        value = "0.0.0.0:8080"
      }
      env {
        name  = "RUNWAY_CALLBACK_AUDIENCE"
        value = local.callback_url
      }
      env {
        name  = "RUNWAY_CALLBACK_TRUSTED_ISSUERS"
        value = local.google_issuer
      }
      env {
        name  = "RUNWAY_CALLBACK_ALLOWED_CALLERS"
        value = join(",", [for id in keys(var.validators) : google_service_account.validator[id].email])
      }
      env {
        name  = "RUNWAY_STORAGE_URI"
        value = "gs://${google_storage_bucket.runs.name}"
      }
      env {
        name  = "RUNWAY_DATA_DIR"
        value = "/tmp/runway"
      }
      env {
        name  = "RUNWAY_LOG_FORMAT"
        value = "json"
      }
      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }
      env {
        name = "RUNWAY_DATABASE_URL"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.database_url.secret_id
            version = "latest"
          }
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.callback]
}

# Only the validators' runtime identities may call back.
resource "google_cloud_run_v2_service_iam_member" "callback_invokers" {
  for_each = var.validators
  name     = google_cloud_run_v2_service.callback.name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.validator[each.key].email}"
}
