#!/usr/bin/env python3
"""Each least-privilege rule of check.py catches its violation: the deployment is copied, one
thing in it is made wrong, and check.py must refuse it naming the problem."""

import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent

MUTATIONS = [
    ("a seventh permission", '"run.jobs.run",', '"run.jobs.run",\n    "run.jobs.delete",', "not exactly"),
    ("a missing permission", '"run.executions.cancel",', "", "not exactly"),
    ("a project-wide grant", "# --- Storage", 'resource "google_project_iam_member" "x" {\n  role = "roles/run.invoker"\n}\n# --- Storage', "project-wide grant"),
    ("a basic role", 'role   = "roles/storage.objectViewer"', 'role   = "roles/editor"', "forbidden role"),
    ("a public callback", '"INGRESS_TRAFFIC_INTERNAL_ONLY"', '"INGRESS_TRAFFIC_ALL"', "ingress"),
    (
        "a web app invoking the callback",
        'role     = "roles/run.invoker"\n  member   = "serviceAccount:${google_service_account.validator[each.key].email}"',
        'role     = "roles/run.invoker"\n  member   = "serviceAccount:web@p.iam.gserviceaccount.com"',
        "validator identities",
    ),
    (
        "a validator with bucket access of its own",
        'member = "serviceAccount:${google_service_account.callback.email}"\n}\n\nresource "google_storage_bucket_iam_member" "callback_create"',
        'member = "serviceAccount:${google_service_account.validator["energyplus"].email}"\n}\n\nresource "google_storage_bucket_iam_member" "callback_create"',
        "validator identities get no bucket access",
    ),
    ("retrying jobs", "max_retries     = 0", "max_retries     = 3", "max_retries"),
    ("unpinned images", 'can(regex("@sha256:[0-9a-f]{64}$", var.runway_image))', "true", "pinned by digest"),
]


def main():
    failures = []
    for what, old, new, expected in MUTATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            for tf in ROOT.glob("*.tf"):
                shutil.copy(tf, tmp)
            changed = False
            for tf in pathlib.Path(tmp).glob("*.tf"):
                text = tf.read_text()
                if old in text:
                    tf.write_text(text.replace(old, new, 1))
                    changed = True
                    break
            if not changed:
                failures.append(f"{what}: the text to change is not in infra/*.tf")
                continue
            out = subprocess.run([sys.executable, str(ROOT / "check.py"), tmp], capture_output=True, text=True)
            if out.returncode == 0 or expected not in out.stderr:
                failures.append(f"{what}: not caught (exit {out.returncode}): {out.stderr.strip()}")
    for failure in failures:
        print(f"infra/check_test.py: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"infra/check_test.py: {len(MUTATIONS)} violations, each caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
