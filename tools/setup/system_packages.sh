#!/usr/bin/env bash
# Debian packages the tests start for real: openssh-server (the ssh profiling runner's loopback device), adb (the
# Android runner's client), postgresql (a search study shared by two workers) and chromium (report.html opened in a
# real browser through Playwright). Installed when missing and this runs as root; otherwise say what to do.
set -euo pipefail
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v adb >/dev/null || missing+=(adb)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# shellcheck: actionlint checks the run: scripts of the workflow `deploykit ci init` writes with it.
command -v shellcheck >/dev/null || missing+=(shellcheck)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (Debian packages the device-profiling and HTML report tests use)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package's own sshd on port 22 is not needed: tests start theirs on a free loopback port.
    # Nor the package's own PostgreSQL cluster: the search test initialises one in its temp folder.
    if command -v service >/dev/null; then
        service ssh stop >/dev/null 2>&1 || true
        service postgresql stop >/dev/null 2>&1 || true
    fi
else
    echo "warning: ${missing[*]} missing; install them (sudo apt-get install ${missing[*]}) or the SSH/ADB/PostgreSQL/browser tests skip" >&2
fi
