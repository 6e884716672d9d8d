#!/usr/bin/env bash
# Install the Debian packages listed in $1 (one per line, '#' comments) that are missing.
# Runs apt-get non-interactively; uses sudo when not root. Prints nothing when all are present.
set -euo pipefail
list_file=${1:-system-packages.txt}
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^\s*$/d' "$list_file")
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
