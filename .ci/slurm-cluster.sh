#!/usr/bin/env bash
# Single-node Slurm (Debian slurm-wlm 22.05) + slurmdbd accounting, for submitit tests.
# No systemd here: daemons are started directly. Run as root.
#   start: install if needed, configure, start, wait for idle (a healthy cluster is left alone)
#   stop: stop slurmd, slurmctld, slurmdbd, mariadb, munge;  status: exit 0 if up
set -euo pipefail
CLUSTER=seqsuite
HOST=$(hostname -s)
CONF=/etc/slurm
LOGS=/var/log/slurm
STATE=/var/lib/slurm/slurmctld     # StateSaveLocation: wiped at each (re)start
SPOOL=/var/lib/slurm/slurmd
DBPASS=slurmdb-ci                  # local-only database, socket access
IDLE_TIMEOUT=${SLURM_IDLE_TIMEOUT:-60}

die() { echo "slurm-cluster: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Wait up to $1 seconds for the command "${@:2}" to succeed.
wait_for() { local t=$1; shift; for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
node_up() { timeout 5 sinfo -h -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }
node_idle() { timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle; }
healthy() { alive /run/munge/munged.pid && alive /run/mysqld/mysqld.pid && alive /run/slurmdbd.pid && alive /run/slurmctld.pid && alive /run/slurmd.pid && node_up; }

stop_pid() {  # stop_pid PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
  local f=$1 pid; alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
  wait_for 15 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

stop() {
  stop_pid /run/slurmd.pid; stop_pid /run/slurmctld.pid; stop_pid /run/slurmdbd.pid
  if [ -x /etc/init.d/mariadb ]; then /etc/init.d/mariadb stop >/dev/null 2>&1 || true; fi
  stop_pid /run/munge/munged.pid
}

install_pkgs() {
  local need=()
  for p in slurmctld slurmd slurm-client slurmdbd munge mariadb-server; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "slurm-cluster: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
    >/tmp/slurm-cluster-apt.log 2>&1 || die "apt-get install failed (see /tmp/slurm-cluster-apt.log)"
}

write_config() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)  # MB, a bit under the real size
  # NodeName must be `hostname -s`, and it must resolve or slurmd/slurmctld refuse to start.
  getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts
  mkdir -p "$CONF" "$LOGS" "$STATE" "$SPOOL"
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
# Daemons run as root: no slurm-user permission juggling on state, spool and logs.
SlurmUser=root
AuthType=auth/munge
# Credentials expire after 10 s (default 120): a requeued job may start again only after
# its old credential expired, so this brings requeue-to-running from minutes to ~12 s.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups in this container: track processes via /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores are the unit: as many 1-CPU jobs run at once as there are cores.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that was down comes back by itself once slurmd registers.
ReturnToService=2
# SIGTERM -> SIGKILL after 5 s (default 30) when a job is cancelled/requeued.
KillWait=5
MessageTimeout=10
SlurmdTimeout=30
MailProg=/bin/true
MpiDefault=none
# Schedule every 2 s instead of waiting for the default (60 s / 30 s) passes.
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
# Set at start above the highest job id in accounting: state is wiped, and a reused id
# would let sacct (hence submitit) report an old job's state for a new one.
FirstJobId=1
# submitit polls sacct for job states: accounting via slurmdbd is required.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
  # slurmdbd refuses a config readable by others; owner must be its SlurmUser (root).
  chown root:root "$CONF/slurmdbd.conf"; chmod 600 "$CONF/slurmdbd.conf"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
  if healthy; then echo "slurm-cluster: already up"; return 0; fi
  install_pkgs
  stop                                     # half-up leftovers: restart everything cleanly
  write_config
  # munge: key (the package usually makes one), runtime dir, daemon as the munge user.
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
  wait_for 10 bash -c 'munge -n | unmunge' || die "munge does not work"
  # mariadb must be up (and the db/user present) before slurmdbd starts.
  # Own session: a caller that cleans up its process group (a test runner, a CI step) must not take it down.
  setsid /etc/init.d/mariadb start >/dev/null 2>&1 </dev/null || die "mariadb failed to start"
  wait_for 30 mariadb-admin ping || die "mariadb not answering"
  mariadb -u root <<EOF || die "could not create slurm_acct_db / its user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
  slurmdbd || die "slurmdbd failed to start (see $LOGS/slurmdbd.log)"
  wait_for 30 sacctmgr -n list cluster || die "slurmdbd not answering (see $LOGS/slurmdbd.log)"
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
  rm -rf "${STATE:?}"/* "${SPOOL:?}"/*      # clean start: no jobs left from an earlier run
  local first t0
  first=$(mariadb -N -u root -e "SELECT COALESCE(MAX(id_job),0)+1 FROM slurm_acct_db.${CLUSTER}_job_table" 2>/dev/null || echo 1)
  sed -i "s/^FirstJobId=.*/FirstJobId=$first/" "$CONF/slurm.conf"
  t0=$EPOCHREALTIME
  slurmctld || die "slurmctld failed to start (see $LOGS/slurmctld.log)"
  slurmd || die "slurmd failed to start (see $LOGS/slurmd.log)"
  wait_for "$IDLE_TIMEOUT" node_idle \
    || die "node not idle after ${IDLE_TIMEOUT}s: $(sinfo -h -o '%T %E' 2>&1 | head -1) (see $LOGS/)"
  echo "slurm-cluster: up, node $HOST idle ($(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}")s after daemon start)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop; echo "slurm-cluster: stopped" ;;
  status) if healthy; then sinfo; else die "not up"; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
