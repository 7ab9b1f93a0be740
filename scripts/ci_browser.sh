#!/usr/bin/env bash
# CI: Debian's Chromium for the browser tests of `trtalk serve` (tests/test_serve_browser.py,
# driven by Playwright's Python API with executable_path=/usr/bin/chromium; no browser download,
# never `playwright install`). Best effort: where it cannot be installed the tests skip and say why.
#   bash scripts/ci_browser.sh
set -uo pipefail
say() { echo "ci_browser: $*"; }
SUDO=""
[ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO="sudo -n"; }
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    timeout 600 $SUDO apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq chromium chromium-driver \
      >/dev/null 2>&1 || say "apt-get install chromium chromium-driver failed"
  else
    say "no apt-get or no root: cannot install chromium; the browser tests will skip"
  fi
fi
[ -x /usr/bin/chromium ] && say "$(/usr/bin/chromium --version 2>/dev/null)" || say "no /usr/bin/chromium"
exit 0
