"""GitHub Actions: `.github/workflows/deploykit.yml`, one matrix job per target (and per named device)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from deploykit.ci.base import CACHE_FOLDER, OUT, PYTHON_VERSION, CIProvider, WorkflowSettings, dump_yaml
from deploykit.errors import DeployKitError

# Steps after a failed build still run under this condition: the report, the cache and the folder are kept for
# a missed gate too, and only a cancelled run skips them.
NOT_CANCELLED = "${{ !cancelled() }}"
CACHE_KEY_SECRET = "${{ secrets.DEPLOYKIT_CACHE_KEY }}"


class GitHubActions(CIProvider):
    name = "github"
    title = "GitHub Actions"
    default_path = ".github/workflows/deploykit.yml"

    def document(self, settings: WorkflowSettings) -> dict:
        jobs = {"build": self._job(settings, {"target": list(settings.targets)}, "ubuntu-latest", device=False)}
        if settings.devices:
            include = [{"target": job.target, "device": job.device} for job in settings.devices]
            jobs["device"] = self._job(settings, {"include": include}, ["self-hosted", settings.runner_label],
                                       device=True)
        return {
            "name": "deploykit",
            "on": {"push": {"branches": ["main"]}, "pull_request": {}, "workflow_dispatch": {}},
            "permissions": {"contents": "read"},
            # GitHub evaluates ${{ }} in env values too: `deploykit ci init` refuses values that hold one. The cache's
            # entries are authenticated with DEPLOYKIT_CACHE_KEY: a repository secret, so the runs of this repository
            # trust each other's entries; without it each run makes its own key and rebuilds the restored cache.
            "env": {"DEPLOYKIT_CACHE": CACHE_FOLDER, "DEPLOYKIT_CACHE_KEY": CACHE_KEY_SECRET, **settings.variables},
            "jobs": jobs,
        }

    def lint(self, text: str, settings: WorkflowSettings) -> None:
        """actionlint reads the text before it is written, where it is installed; the self-hosted runner's label is
        declared to it, as the repository's own config would. Its shellcheck pass is off: --install is the user's
        own command, and shellcheck's style advice on it is no reason to refuse the workflow."""
        binary = actionlint()
        if binary is None:
            return
        with tempfile.TemporaryDirectory(prefix="deploykit-ci-") as folder:
            workflow, config = Path(folder) / "deploykit.yml", Path(folder) / "actionlint.yaml"
            workflow.write_text(text, encoding="utf-8")
            config.write_text(dump_yaml({"self-hosted-runner": {"labels": [settings.runner_label]}}), encoding="utf-8")
            command = [binary, "-no-color", "-oneline", "-shellcheck=", "-config-file", config.name, workflow.name]
            try:
                linted = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise DeployKitError(f"{binary} could not check the workflow ({error}); nothing was written.") from None
        if linted.returncode != 0:
            findings = (linted.stdout or linted.stderr).strip().splitlines() or [f"exit code {linted.returncode}"]
            more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
            finding = findings[0].replace(f"{workflow.name}:", "line ", 1)
            raise DeployKitError(f"actionlint finds a problem in the workflow, so nothing was written: "
                                 f"{finding[:200]}{more}; change the option it points at.")

    def _job(self, settings: WorkflowSettings, matrix: dict, runs_on: str | list[str], device: bool) -> dict:
        """One job per matrix entry: $TARGET (and $DEVICE) reach the scripts as environment variables."""
        suffix = "-${{ matrix.device }}" if device else ""
        name = f"deploykit-${{{{ matrix.target }}}}{suffix}"
        cache_key = f"{name}-${{{{ github.run_id }}}}-${{{{ github.run_attempt }}}}"
        variables = {"TARGET": "${{ matrix.target }}", **({"DEVICE": "${{ matrix.device }}"} if device else {})}
        return {
            "name": f"{'device' if device else 'build'} ${{{{ matrix.target }}}}"
                    + (" on ${{ matrix.device }}" if device else ""),
            "runs-on": runs_on,
            "strategy": {"fail-fast": False, "matrix": matrix},
            "env": variables,
            "steps": [
                {"uses": "actions/checkout@v5"},
                {"uses": "actions/setup-python@v6", "with": {"python-version": PYTHON_VERSION}},
                {"name": "Install deploykit", "run": settings.install},
                {"name": "Restore the deploykit cache", "uses": "actions/cache/restore@v5",
                 "with": {"path": CACHE_FOLDER, "key": cache_key, "restore-keys": f"{name}-"}},
                # Exit code 3 (a gate missed) or 2 (bad input) fails this step and the job.
                {"name": "Build", "run": settings.build_command(device)},
                {"name": "Verify the shipped files", "run": settings.verify_command},
                # Exit code 3 (a regression) or 5 (speed undecided on a busy runner) fails the job.
                *([{"name": "Compare with the earlier build", "run": compare}]
                  if (compare := settings.compare_command(device)) else []),
                {"name": "Summary", "if": NOT_CANCELLED, "run": _SUMMARY},
                {"name": "Save the deploykit cache", "if": NOT_CANCELLED, "uses": "actions/cache/save@v5",
                 "with": {"path": CACHE_FOLDER, "key": cache_key}},
                {"name": "Upload the target folder", "if": NOT_CANCELLED, "uses": "actions/upload-artifact@v6",
                 "with": {"name": name, "path": f"{OUT}/", "if-no-files-found": "ignore"}},
            ],
        }


def actionlint() -> str | None:
    """The actionlint binary: beside this Python (the test extra installs it there), else on PATH."""
    return shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))


_SUMMARY = f"""\
if [ -f "{OUT}/$TARGET/report.md" ]; then
  cat "{OUT}/$TARGET/report.md" >> "$GITHUB_STEP_SUMMARY"
else
  echo "deploykit wrote no report for $TARGET; the Build step's log says why." >> "$GITHUB_STEP_SUMMARY"
fi
"""
