"""GitLab CI: `.gitlab-ci.yml`, one `parallel:matrix` job per target (and per named device)."""

from __future__ import annotations

from deploykit.ci.base import (CACHE_FOLDER, COMPARE_JUNIT_XML, JUNIT_XML, OUT, PYTHON_VERSION, CIProvider,
                               WorkflowSettings)


class GitLabCI(CIProvider):
    name = "gitlab"
    title = "GitLab CI"
    default_path = ".gitlab-ci.yml"

    def document(self, settings: WorkflowSettings) -> dict:
        document = {
            "stages": ["build"],
            # expand: false, or GitLab would expand a `$` in the user's values before the job sees them.
            "variables": {"DEPLOYKIT_CACHE": f"$CI_PROJECT_DIR/{CACHE_FOLDER}",
                          **{name: {"value": value, "expand": False} for name, value in settings.variables.items()}},
            "deploykit-build": self._job(settings, [{"TARGET": list(settings.targets)}], device=False),
        }
        if settings.devices:
            matrix = [{"TARGET": job.target, "DEVICE": job.device} for job in settings.devices]
            document["deploykit-device"] = {**self._job(settings, matrix, device=True),
                                            "tags": [settings.runner_label]}
        return document

    def _job(self, settings: WorkflowSettings, matrix: list[dict], device: bool) -> dict:
        """$TARGET (and $DEVICE) are the matrix's variables; a non-zero exit (3: a gate missed) fails the job."""
        name = "deploykit-$TARGET" + ("-$DEVICE" if device else "")
        compare = settings.compare_command(device)
        return {
            "stage": "build",
            "image": f"python:{PYTHON_VERSION}",
            "parallel": {"matrix": matrix},
            # when: always keeps what a build that missed a gate exported and measured.
            "cache": {"key": name, "paths": [f"{CACHE_FOLDER}/"], "when": "always"},
            "before_script": [settings.install],
            "script": [settings.build_command(device), settings.verify_command, *([compare] if compare else [])],
            "after_script": [f'if [ -f "{OUT}/$TARGET/report.md" ]; then cat "{OUT}/$TARGET/report.md"; fi'],
            "artifacts": {"name": name, "when": "always", "paths": [f"{OUT}/"],
                          "reports": {"junit": [JUNIT_XML, COMPARE_JUNIT_XML] if compare else JUNIT_XML}},
        }
