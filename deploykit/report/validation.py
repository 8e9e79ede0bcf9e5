"""Where a report's fidelity was measured: on the build host, or from outputs the device computed."""

from __future__ import annotations


def fidelity_where(validated: dict | None) -> str:
    """Where fidelity and accuracy were computed, in one sentence, with a host/device difference beyond the
    tolerance called out."""
    if not validated or validated.get("where") != "device":
        reason = f" ({validated['reason']})" if validated and validated.get("reason") else ""
        return f"Fidelity and accuracy were computed on the build host's runtime{reason}."
    runtime = validated.get("runtime") or {}
    text = (f"Fidelity and accuracy were computed from outputs of the device `{validated['device']}` "
            f"({runtime.get('name')} {runtime.get('version') or ''}, {runtime.get('delegate') or 'default kernels'}).")
    differences = ", ".join(f"{name} {value:+.4f}" for name, value in validated["device_minus_host"].items())
    if validated.get("beyond_tolerance"):
        return text + (f" **The device differs from the build host beyond {validated['tolerance']}**: {differences} "
                       "(device minus host); the gates used the device's figures.")
    return text + f" Device minus host: {differences or 'nothing to compare'}."
