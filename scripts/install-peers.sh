#!/usr/bin/env bash
# The real peers the tests talk to (Debian packages): Orthanc as the PACS, DCMTK as modality and reference,
# dicom3tools and PixelMed as validators, systemd for `systemd-analyze verify`, PostgreSQL for the shared-database
# tests (a throwaway cluster per run, started by the tests; the package's own cluster is never started here).
set -euo pipefail
PKGS=(dcmtk dicom3tools orthanc pixelmed-apps libpixelmed-java default-jre-headless systemd curl postgresql orthanc-dicomweb chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # policy-rc.d keeps the package from starting a system Orthanc on 4242/8042
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
