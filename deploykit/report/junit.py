"""`--junit-xml`: a build's gates as JUnit XML, the test-report format CI services display (GitLab's
`artifacts:reports:junit`, Jenkins, test-report actions on GitHub).

One testsuite per target, one testcase per gate; a missed gate is a failure whose
message gives the measured value and the limit. A build that stopped with an error
(bad input, a target that could not be built) is one error case per requested target.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from deploykit.atomic_files import write_atomically
from deploykit.results import BuildResult



def junit_xml(results: list[BuildResult], error: str | None = None, targets: list[str] = ()) -> str:
    """The document: `results` of a finished build, or `error` for each of `targets` when it stopped."""
    suites = ElementTree.Element("testsuites", name="deploykit")
    for result in results:
        _gate_suite(suites, result)
    if error is not None:
        for target in targets:
            suite = _suite(suites, target, tests=1, failures=0, errors=1, seconds=0.0)
            case = ElementTree.SubElement(suite, "testcase", classname=f"deploykit.{target}", name="build", time="0")
            ElementTree.SubElement(case, "error", message=error, type="DeployKitError").text = error
    for key in ("tests", "failures", "errors", "skipped"):
        suites.set(key, str(sum(int(suite.get(key)) for suite in suites)))
    suites.set("time", f"{sum(float(suite.get('time')) for suite in suites):.3f}")
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: Path, results: list[BuildResult], error: str | None = None, targets: list[str] = ()) -> Path:
    return write_atomically(path, junit_xml(results, error, targets))


def _gate_suite(parent: ElementTree.Element, result: BuildResult) -> None:
    report = result.report
    checks = report["gates"]["checks"]
    failures = [check for check in checks if not check["passed"] and not check.get("inconclusive")]
    suite = _suite(parent, result.target, tests=len(checks), failures=len(failures), errors=0,
                   seconds=sum(report.get("timings_s", {}).values()),
                   skipped=sum(bool(check.get("inconclusive")) for check in checks))
    artifact = report["artifact"]
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (("folder", str(result.folder)), ("artifact", artifact["path"]),
                        ("precision", artifact["precision"]), ("bytes", artifact["bytes"]),
                        ("sha256", artifact["sha256"]), ("latency_ms_p50", report["metrics"]["latency_ms"]["p50"])):
        ElementTree.SubElement(properties, "property", name=name, value=str(value))
    for check in checks:
        case = ElementTree.SubElement(suite, "testcase", classname=f"deploykit.{result.target}", name=check["name"],
                                      time="0")
        if check.get("inconclusive"):  # JUnit has no "undecided": a skipped case with the reason is the nearest
            ElementTree.SubElement(case, "skipped", message=f"{check['name']} inconclusive: {check['reason']}")
        elif not check["passed"]:
            message = f"{check['name']}: measured {_value(check['value'])}, limit {_value(check['limit'])}"
            ElementTree.SubElement(case, "failure", message=message, type="GateMissed").text = (
                f"{message}; see {result.folder / 'report.md'}")


def _suite(parent: ElementTree.Element, name: str, tests: int, failures: int, errors: int,
           seconds: float, skipped: int = 0) -> ElementTree.Element:
    return ElementTree.SubElement(parent, "testsuite", name=name, tests=str(tests), failures=str(failures),
                                  errors=str(errors), skipped=str(skipped), time=f"{seconds:.3f}")


def _value(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
