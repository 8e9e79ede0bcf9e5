"""`deploykit compare --junit-xml`: the comparison as JUnit XML, one testsuite with one testcase per check (speed,
size, fidelity), so that CI services show a regression beside the build's own gates.

A failed check is a failure whose message is the check's line; an inconclusive or skipped check (JUnit has no
"undecided") is a skipped case with its reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from deploykit.atomic_files import write_atomically


def comparison_junit(document: dict) -> str:
    """The XML of a comparison's --summary-json `document`."""
    target = document["new"]["target"] or "build"
    checks = document["checks"]
    counts = {"tests": len(checks), "failures": sum(check["status"] == "fail" for check in checks), "errors": 0,
              "skipped": sum(check["status"] in ("inconclusive", "skipped") for check in checks)}
    counts = {key: str(value) for key, value in counts.items()}
    suites = ElementTree.Element("testsuites", name="deploykit compare", time="0", **counts)
    suite = ElementTree.SubElement(suites, "testsuite", name=f"compare {target}", time="0", **counts)
    properties = ElementTree.SubElement(suite, "properties")
    for role in ("base", "new"):
        ElementTree.SubElement(properties, "property", name=role, value=document[role]["path"])
    for check in checks:
        case = ElementTree.SubElement(suite, "testcase", classname=f"deploykit.compare.{target}", name=check["name"],
                                      time="0")
        if check["status"] == "fail":
            ElementTree.SubElement(case, "failure", message=check["message"], type="Regression").text = check["message"]
        elif check["status"] != "pass":
            ElementTree.SubElement(case, "skipped", message=f"{check['status']}: {check['message']}")
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_comparison_junit(path: Path, document: dict) -> Path:
    return write_atomically(path, comparison_junit(document))
