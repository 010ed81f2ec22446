output "launcher_url" {
  description = "The launcher's URL: the web app's RUNWAY_LAUNCHER_URL, and the audience of its ID tokens."
  value       = local.launcher_url
}

output "callback_url" {
  description = "The callback service's URL (internal ingress); envelopes carry <this>/v1/callbacks."
  value       = local.callback_url
}

output "bucket" {
  description = "The bucket runs are stored in."
  value       = google_storage_bucket.runs.name
}

output "launcher_service_account" {
  description = "The launcher's identity."
  value       = google_service_account.launcher.email
}

output "validator_service_accounts" {
  description = "Each validator's runtime identity: the only one whose ID token may call back for its attempts."
  value       = { for id, sa in google_service_account.validator : id => sa.email }
}

output "validator_jobs" {
  description = "Each validator's Cloud Run Job."
  value       = local.job_names
}

output "validators_json" {
  description = "The launcher's validator registry, as deployed."
  value       = local.validators_json
}
