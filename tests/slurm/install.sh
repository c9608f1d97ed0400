#!/usr/bin/env bash
# Debian packages of the local test cluster (tests/slurm/cluster.sh); run as root, ~30 s.
# Daemons are not started here: policy-rc.d / no systemd in containers; cluster.sh starts them.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  munge slurmctld slurmd slurm-client slurmdbd mariadb-server
