#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for trying the runner's Slurm executor and for
# its tests: `scripts/local-slurm.sh start|stop|status`.
#
# Needs Debian/Ubuntu's packages `munge slurmctld slurmd slurm-client` (`install` installs
# them with apt-get) and root: slurmd runs jobs as their owner, which needs root. Nothing is
# touched outside the state folder ($LOCAL_SLURM_DIR, default /tmp/local-slurm) except
# munge's key (/etc/munge/munge.key, created by the package) and the daemons' processes.
# The node gets every CPU and 90 % of the memory of this machine; the partition is `debug`.
set -euo pipefail

STATE="${LOCAL_SLURM_DIR:-/tmp/local-slurm}"
CONF="$STATE/slurm.conf"

die() { echo "local-slurm: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root (slurmd starts jobs as their owner)"
}

install_packages() {
  need_root
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
}

write_conf() {
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"
  cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=30
KillWait=5
SlurmctldPort=${LOCAL_SLURM_PORT:-6817}
SlurmdPort=$(( ${LOCAL_SLURM_PORT:-6817} + 1 ))
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( mem / cpus ))
CONF
}

running() {
  [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null
}

start() {
  need_root
  command -v slurmctld >/dev/null || die "Slurm is not installed; run: $0 install"
  if running; then echo "local-slurm: already running (SLURM_CONF=$CONF)"; return; fi
  write_conf
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
    runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  fi
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if SLURM_CONF="$CONF" sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "local-slurm: up; export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  die "the node did not become idle in 30 s; see $STATE/log/"
}

stop() {
  for d in slurmd slurmctld; do
    if [ -f "$STATE/$d.pid" ]; then
      kill "$(cat "$STATE/$d.pid")" 2>/dev/null || true
      rm -f "$STATE/$d.pid"
    fi
  done
  echo "local-slurm: stopped (state kept in $STATE)"
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status)
    if running; then SLURM_CONF="$CONF" sinfo; else echo "local-slurm: not running"; exit 1; fi ;;
  conf) echo "$CONF" ;;
  *) echo "usage: $0 install|start|stop|status|conf" >&2; exit 2 ;;
esac
