#!/usr/bin/env python3
"""Offline checks of infra/*.tf that need no provider: least privilege and the shape of the
deployment. Run by scripts/test.sh; exits non-zero with one line per violation.

- The custom role grants exactly the six permissions the Cloud Run backend calls.
- No project-wide grant at all (google_project_iam_*): every binding is on one resource.
- No basic or admin role anywhere (owner, editor, viewer, *.admin, serviceAccountUser,
  serviceAccountTokenCreator).
- roles/run.invoker on the callback service only for the validators' runtime identities, and
  the callback service's ingress is internal only.
- allUsers appears only behind `var.launcher_public`, on the launcher.
- Every image is pinned by digest (validated variables) and jobs never retry (max_retries 0).
- No validator runtime identity has any bucket access: jobs use attempt-scoped tokens.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent
JOB_LAUNCHER = {
    "run.jobs.run",
    "run.jobs.runWithOverrides",
    "run.jobs.get",
    "run.executions.get",
    "run.executions.list",
    "run.executions.cancel",
}
FORBIDDEN_ROLES = re.compile(
    r'"roles/(owner|editor|viewer|[a-z]+\.admin|iam\.serviceAccountUser|iam\.serviceAccountTokenCreator|run\.developer)"'
)


def blocks(text):
    """Yields (type, name, body) of every top-level `resource "type" "name" { ... }`."""
    for match in re.finditer(r'^resource\s+"([^"]+)"\s+"([^"]+)"\s*\{', text, re.M):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        yield match.group(1), match.group(2), text[match.end() : i - 1]


def main():
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    text = "\n".join(p.read_text() for p in sorted(root.glob("*.tf")))
    errors = []
    resources = list(blocks(text))
    if not resources:
        errors.append("no resources found in infra/*.tf")
    by_type = {}
    for kind, name, body in resources:
        by_type.setdefault(kind, []).append((name, body))

    roles = by_type.get("google_project_iam_custom_role", [])
    if len(roles) != 1:
        errors.append(f"expected one custom role, found {len(roles)}")
    for name, body in roles:
        listed = re.search(r"permissions\s*=\s*\[(.*?)\]", body, re.S)
        perms = set(re.findall(r'"([^"]+)"', listed.group(1))) if listed else set()
        if perms != JOB_LAUNCHER:
            errors.append(
                f"custom role {name}: permissions {sorted(perms)} are not exactly {sorted(JOB_LAUNCHER)}"
            )

    for kind in by_type:
        if kind.startswith("google_project_iam_") and kind != "google_project_iam_custom_role":
            errors.append(f"{kind}: a project-wide grant; bind roles on the resource instead")
    for match in FORBIDDEN_ROLES.finditer(text):
        errors.append(f"forbidden role {match.group(0)}")

    callback = dict(by_type.get("google_cloud_run_v2_service", [])).get("callback", "")
    if 'ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"' not in callback and not re.search(
        r'ingress\s*=\s*"INGRESS_TRAFFIC_INTERNAL_ONLY"', callback
    ):
        errors.append("the callback service's ingress is not INGRESS_TRAFFIC_INTERNAL_ONLY")
    for name, body in by_type.get("google_cloud_run_v2_service_iam_member", []):
        service = re.search(r"name\s*=\s*google_cloud_run_v2_service\.(\w+)\.name", body)
        role = re.search(r'role\s*=\s*"([^"]+)"', body)
        member = re.search(r"member\s*=\s*(.+)", body)
        if not (service and role and member):
            errors.append(f"service IAM member {name}: cannot read its service, role and member")
            continue
        if role.group(1) != "roles/run.invoker":
            errors.append(f"service IAM member {name}: role {role.group(1)} (only run.invoker is granted)")
        if service.group(1) == "callback" and "google_service_account.validator[" not in member.group(1):
            errors.append(f"service IAM member {name}: the callback's invokers must be validator identities")
        if "allUsers" in body and not (service.group(1) == "launcher" and "var.launcher_public" in body):
            errors.append(f"service IAM member {name}: allUsers outside the launcher_public switch")
    for kind in ("google_storage_bucket_iam_member", "google_storage_bucket_iam_binding"):
        for name, body in by_type.get(kind, []):
            if "google_service_account.validator[" in body:
                errors.append(
                    f"bucket IAM {name}: validator identities get no bucket access (attempt tokens carry it)"
                )
    if "allAuthenticatedUsers" in text:
        errors.append("allAuthenticatedUsers is granted somewhere")

    for name, body in by_type.get("google_cloud_run_v2_job", []):
        if not re.search(r"max_retries\s*=\s*0\b", body):
            errors.append(f"job {name}: max_retries must be 0 (Runway retries attempts itself)")
        if not re.search(r"service_account\s*=\s*google_service_account\.validator\[", body):
            errors.append(f"job {name}: must run as its validator's own service account")
    for variable in ("runway_image", "validators"):
        block = re.search(r'variable\s+"%s"\s*\{(.*?)\n\}' % variable, text, re.S)
        if not block or "@sha256:[0-9a-f]{64}$" not in block.group(1):
            errors.append(f"variable {variable}: images are not required to be pinned by digest")

    for error in errors:
        print(f"infra/check.py: {error}", file=sys.stderr)
    if errors:
        return 1
    print(f"infra/check.py: {len(resources)} resources, least-privilege checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
