#!/usr/bin/env bash
# Debian's headless Chromium and its matching driver for the `browser` tests (devtools/browser.py drives them
# with selenium: /usr/bin/chromium, /usr/bin/chromedriver). Installs only when missing. Both come from the same
# Debian source package, so the driver always matches the browser (no download of a driver at test time).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "setup_browser: ready ($(chromium --version 2>/dev/null | head -1))"
  exit 0
fi
echo "setup_browser: installing Debian's chromium and chromium-driver"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# fonts-liberation: metric-compatible sans-serif fonts, so headless layout (and the screenshot) is stable.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  chromium chromium-driver fonts-liberation
echo "setup_browser: ready ($(chromium --version 2>/dev/null | head -1))"
