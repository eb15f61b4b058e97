#!/usr/bin/env bash
# Install the Debian packages discover can use, when we can (root + apt-get) and they are
# missing. Never fails the build: without them the dependent features say what to install.
set -u
want=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
# headless Chromium and its matching WebDriver for the HTML report's browser test
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v chromedriver >/dev/null 2>&1 || want+=(chromium-driver)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root or no apt-get; skipping system packages: ${want[*]}" >&2
  exit 0
fi
echo "installing system packages: ${want[*]}" >&2
for attempt in 1 2; do
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null 2>&1; then
    exit 0
  fi
  [ "$attempt" = 1 ] && apt-get update -q >/dev/null 2>&1
done
echo "note: could not install ${want[*]}; continuing without them" >&2
exit 0
