#!/usr/bin/env bash
# Installs dicomnode as a service: user, /opt/dicomnode (code + venv), /var/lib/dicomnode (data),
# /etc/dicomnode (config), the systemd unit. Run as root from the repository root.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
id dicomnode >/dev/null 2>&1 || useradd --system --home /var/lib/dicomnode --shell /usr/sbin/nologin dicomnode
# the GPU device nodes belong to group video/render on most distributions
for g in video render; do getent group $g >/dev/null && usermod -aG $g dicomnode; done
install -d -o dicomnode -g dicomnode -m 0750 /var/lib/dicomnode
install -d -m 0755 /etc/dicomnode /opt/dicomnode
rsync -a --delete --exclude .venv --exclude var --exclude .git "$SRC"/ /opt/dicomnode/
(cd /opt/dicomnode && bash scripts/install.sh)
if [ ! -f /etc/dicomnode/dicomnode.toml ]; then
  sed 's#^data_dir = "var"#data_dir = "/var/lib/dicomnode"#' /opt/dicomnode/config/dicomnode.toml > /etc/dicomnode/dicomnode.toml
fi
touch /etc/dicomnode/dicomnode.env
install -m 0644 /opt/dicomnode/systemd/dicomnode.service /etc/systemd/system/dicomnode.service
systemctl daemon-reload
systemctl enable --now dicomnode
echo "dicomnode installed; check with: /opt/dicomnode/.venv/bin/dicomnode status --config /etc/dicomnode/dicomnode.toml"
