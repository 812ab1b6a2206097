#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, to try the cluster commands (docs/cluster.md) on a laptop and
# to test them: munge, slurmctld and two slurmd daemons (`slurmd -N`), all started from a directory of their own.
#
#   eval "$(bash scripts/local_slurm.sh up)"   # installs the Debian packages if missing (as root), starts the
#                                              # daemons, waits for two idle nodes; prints only `export SLURM_CONF=...`
#   bash scripts/local_slurm.sh status         # which of its daemons run, and sinfo
#   bash scripts/local_slurm.sh down           # cancels its jobs and stops exactly the daemons `up` started
#
# The nodes are called 127.0.0.1 and 127.0.0.2: names that resolve on any machine without editing /etc/hosts
# (Linux routes all of 127.0.0.0/8 to the loopback), which the process group's rendezvous needs, since submitit
# and torchrun take the first node's name as the master address. Each node listens on its own port.
# Environment: ODCONV_SLURM_DIR (default ${XDG_RUNTIME_DIR:-/tmp}/odconv-slurm) holds config, state and logs;
# ODCONV_SLURM_PORT (default 17817) is slurmctld's port, the nodes take the next two; ODCONV_SLURM_CPUS (default 4)
# is the number of CPUs each node advertises (several small jobs can then share a node).
set -euo pipefail

DIR=${ODCONV_SLURM_DIR:-${XDG_RUNTIME_DIR:-/tmp}/odconv-slurm}
PORT=${ODCONV_SLURM_PORT:-17817}
CPUS=${ODCONV_SLURM_CPUS:-4}
NODES=(127.0.0.1 127.0.0.2)
CONF=$DIR/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "local_slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=()
  for cmd in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd#*:}")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}: run as root, or: sudo apt-get install ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # The package scripts try to start the system services; a policy-rc.d that says no is honoured by
  # invoke-rc.d, and without systemd running nothing starts anyway. Only this cluster's daemons are started.
  # One apt at a time on the machine (the test suite's workers may install chromium meanwhile).
  local apt=(flock /tmp/odconv-apt.lock apt-get)
  "${apt[@]}" install -y -q --no-install-recommends "${PACKAGES[@]}" >&2 ||
    { "${apt[@]}" update -q >&2 && "${apt[@]}" install -y -q --no-install-recommends "${PACKAGES[@]}" >&2; } ||
    die "apt-get install ${PACKAGES[*]} failed"
}

write_config() {
  mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/log
  chmod 700 "$DIR"
  local host
  host=$(hostname -s)
  if [[ ! -s $DIR/munge.key ]]; then
    (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge.key")
  fi
  local i nodes=""
  for i in "${!NODES[@]}"; do
    nodes+="NodeName=${NODES[i]} NodeHostname=$host Port=$((PORT + 1 + i)) CPUs=$CPUS RealMemory=4000"
    nodes+=" State=UNKNOWN"$'\n'
  done
  cat >"$CONF.tmp" <<EOF
# Written by scripts/local_slurm.sh: a two-node cluster on one machine.
ClusterName=odconv
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (120 s by default).
AuthInfo=socket=$DIR/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
# No cgroups: processes are tracked through their parent ids and tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# The nodes advertise ODCONV_SLURM_CPUS CPUs each, whatever this machine has.
SlurmdParameters=config_overrides
# Finished jobs stay visible to scontrol for 30 minutes (state, restarts, start and end times).
MinJobAge=1800
KillWait=15
InactiveLimit=0
SlurmdTimeout=60
$nodes
PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$CONF.tmp" "$CONF"
}

wait_idle() {
  local n
  for ((n = 0; n < 120; n++)); do
    if [[ $(sinfo -h -N -o "%N %t" 2>/dev/null | grep -c " idle$") == "${#NODES[@]}" ]]; then
      return 0
    fi
    if sinfo -h -N -o "%t" 2>/dev/null | grep -Eq "inval|drain|down"; then
      sinfo -N -o "%N %t %E" >&2 || true
      die "a node is not usable (reason above); logs in $DIR/log"
    fi
    sleep 0.5
  done
  sinfo -N >&2 || true
  die "the nodes did not become idle within 60 s; logs in $DIR/log"
}

up() {
  install_packages
  export SLURM_CONF=$CONF
  if alive "$DIR/munged.pid" && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.${NODES[0]}.pid" &&
    alive "$DIR/slurmd.${NODES[1]}.pid"; then
    wait_idle_or_busy
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  write_config
  if ! alive "$DIR/munged.pid"; then
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
      --log-file="$DIR/log/munged.log" --seed-file="$DIR/munged.seed" >&2 ||
      die "munged did not start; see $DIR/log/munged.log"
  fi
  if ! alive "$DIR/slurmctld.pid"; then
    # -c: start clean; the jobs of an earlier `up` died with its daemons.
    slurmctld -f "$CONF" -c >&2 || die "slurmctld did not start; see $DIR/log/slurmctld.log"
  fi
  local node
  for node in "${NODES[@]}"; do
    alive "$DIR/slurmd.$node.pid" || slurmd -f "$CONF" -N "$node" >&2 ||
      die "slurmd -N $node did not start; see $DIR/log/slurmd.$node.log"
  done
  wait_idle
  say "two nodes idle (${NODES[*]}); config $CONF, logs $DIR/log"
  echo "export SLURM_CONF=$CONF"
}

wait_idle_or_busy() {
  # A running cluster may be busy with jobs: responding is enough.
  sinfo -h >/dev/null 2>&1 || die "daemons run but slurmctld does not answer; try: bash $0 down && bash $0 up"
}

stop_pidfile() {
  local pidfile=$1 pid n
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for ((n = 0; n < 100; n++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# slurmstepd processes (one per job step) outlive slurmd; ours are the ones started with this cluster's config.
our_stepds() {
  local p
  for p in $(pgrep -x slurmstepd || true); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$CONF" && echo "$p"
  done
  return 0
}

down() {
  [[ -f $CONF ]] || { say "no cluster in $DIR"; return 0; }
  export SLURM_CONF=$CONF
  if alive "$DIR/slurmctld.pid"; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    local n
    for ((n = 0; n < 60; n++)); do
      [[ -z $(squeue -h -t running,completing 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  local node
  for node in "${NODES[@]}"; do stop_pidfile "$DIR/slurmd.$node.pid"; done
  stop_pidfile "$DIR/slurmctld.pid"
  local stepds
  stepds=$(our_stepds)
  [[ -z $stepds ]] || kill -KILL $stepds 2>/dev/null || true
  stop_pidfile "$DIR/munged.pid"
  say "stopped (state and logs kept in $DIR)"
}

status() {
  local name
  for name in munged slurmctld "slurmd.${NODES[0]}" "slurmd.${NODES[1]}"; do
    if alive "$DIR/$name.pid"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if alive "$DIR/slurmctld.pid"; then SLURM_CONF=$CONF sinfo -N; fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
