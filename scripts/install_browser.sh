#!/usr/bin/env bash
# Install the headless browser the report test drives: Debian's chromium (/usr/bin/chromium).
#
#   scripts/install_browser.sh            # exit 0: a browser is there (installed now or before)
#   scripts/install_browser.sh --check    # install nothing; exit 0 only if the browser is there
#
# Installs with apt-get where the package is missing and this runs as root; otherwise it exits
# non-zero with the reason on stderr. `make test` runs it before pytest; the report test runs
# `--check` (nothing downloads during the tests) and skips with its reason.
# Playwright's own browser download (`playwright install`) is never used: the report test drives
# the OS package through Playwright for Python (the `report` extra).
set -euo pipefail

BROWSER=${SEGLAB_CHROMIUM:-/usr/bin/chromium}

if [ -x "$BROWSER" ]; then
    echo "install_browser: $BROWSER is installed"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "install_browser: $BROWSER is missing; install it with scripts/install_browser.sh (as root), or set SEGLAB_CHROMIUM=<path>" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $BROWSER is missing and this system has no apt-get; install Chromium and set SEGLAB_CHROMIUM=<path>" >&2
    exit 2
fi
if [ "$(id -u)" != "0" ]; then
    echo "install_browser: $BROWSER is missing and installing it needs root: sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >/tmp/install_browser.log 2>&1; then
    # a fresh container has no package lists yet
    apt-get update >>/tmp/install_browser.log 2>&1 || true
    if ! apt-get install -y --no-install-recommends chromium >>/tmp/install_browser.log 2>&1; then
        echo "install_browser: apt-get install chromium failed (log: /tmp/install_browser.log):" >&2
        tail -n 5 /tmp/install_browser.log >&2
        exit 4
    fi
fi
if [ ! -x "$BROWSER" ]; then
    echo "install_browser: apt-get installed chromium but $BROWSER is not there" >&2
    exit 5
fi
echo "install_browser: installed $BROWSER"
