#!/usr/bin/env bash
# Render an HTML report in headless Chromium and save screenshots (top of the page and, with a
# second height, the whole page) for a human look.
#   scripts/screenshot_report.sh REPORT.html OUT_PREFIX [WIDTH] [HEIGHT]
# writes OUT_PREFIX.png (WIDTH x HEIGHT, default 1400 x 2000) and OUT_PREFIX-tall.png (WIDTH x 3 HEIGHT).
# Needs Debian's chromium (apt-get install -y chromium); no network, no GPU.
set -euo pipefail
report=$(realpath "$1"); out=$2; w=${3:-1400}; h=${4:-2000}
bin=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$bin" ] || { echo "error: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
opts=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
      --disable-sync --no-first-run --hide-scrollbars)
"$bin" "${opts[@]}" --screenshot="$out.png" --window-size="$w,$h" "file://$report" 2>/dev/null
"$bin" "${opts[@]}" --screenshot="$out-tall.png" --window-size="$w,$((3 * h))" "file://$report" 2>/dev/null
ls -la "$out.png" "$out-tall.png"
