#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the `slurm` tests and CI (README "SLURM").
#
#   scripts/slurm-local.sh install   # apt packages: slurmctld slurmd slurm-client munge (root; once)
#   scripts/slurm-local.sh up        # write slurm.conf, start munged + slurmctld + slurmd, wait for the node
#   scripts/slurm-local.sh status    # daemons, node and queue (exit 0 when up, 3 when down)
#   scripts/slurm-local.sh down      # cancel all jobs, stop the daemons by their PID files
#
# Every command is idempotent (`up` on a running cluster only checks it) and every wait has a
# timeout (SMET_SLURM_TIMEOUT seconds, default 30). No accounting daemon: submitit falls back to the
# job's result file (see README "SLURM").
#
# The cluster: node `hostname -s` at 127.0.0.1 with SMET_SLURM_CPUS (default 32) CPUs overcommitted
# on the real cores (many tiny jobs in parallel), the real memory, SMET_SLURM_GPUS (default 4) fake
# GPUs (`--gres=gpu:N` is accepted; they are clones of /dev/null, no CUDA), partitions `cpu`
# (default) and `gpu` (the names the templates in slurm/ and conf/hydra/launcher/ use).
# slurm.conf goes to /etc/slurm (SLURM's default location, so every client finds it); a slurm.conf
# that this script did not write is never overwritten.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin

TIMEOUT="${SMET_SLURM_TIMEOUT:-30}"
NCPUS="${SMET_SLURM_CPUS:-32}"
NGPUS="${SMET_SLURM_GPUS:-4}"
CRED_EXPIRE="${SMET_SLURM_CRED_EXPIRE:-5}"   # also how long a requeued job waits before it restarts
CONF_CHANGED=0
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
MARKER="# written by smet scripts/slurm-local.sh"
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_DIR=/run/munge
MUNGE_PID="$MUNGE_DIR/munged.pid"
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

need_root() {
  [[ "$(id -u)" == 0 ]] || die "$1 needs root (the daemons run as root here)"
}

installed() {
  command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 &&
    command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}

# pid_alive PIDFILE NAME: the PID in PIDFILE runs a process called NAME (guards against reused PIDs)
pid_alive() {
  local file="$1" name="$2" pid
  [[ -s "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [[ -n "$pid" ]] && [[ -r "/proc/$pid/comm" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name"* ]]
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.1 s until it succeeds or time runs out
wait_for() {
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

cmd_install() {
  if installed; then
    say "SLURM and munge already installed ($(sbatch --version))"
    return 0
  fi
  need_root install
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null
  fi
  installed || die "installation finished but slurmctld/slurmd/sbatch/munged are not on PATH"
  say "installed $(sbatch --version)"
}

node_name() { hostname -s; }

render_conf() {
  local node mem
  node="$(node_name)"
  mem="$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p')"
  [[ -n "$mem" ]] || mem=4096
  local gres_node="" gres_types=""
  if ((NGPUS > 0)); then
    gres_node=" Gres=gpu:$NGPUS"
    gres_types="GresTypes=gpu"
  fi
  cat <<EOF
$MARKER (\`down\` leaves it; \`up\` rewrites it)
ClusterName=smetlocal
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
InactiveLimit=0
MinJobAge=300
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
$gres_types
NodeName=$node NodeAddr=127.0.0.1 CPUs=$NCPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$NCPUS ThreadsPerCore=1 RealMemory=$mem$gres_node State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node MaxTime=INFINITE State=UP
EOF
}

write_conf() {
  if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; move it away to use the local cluster"
  fi
  mkdir -p "$CONF_DIR" "$SPOOL_CTLD" "$SPOOL_D" "$LOG_DIR"
  local tmp
  CONF_CHANGED=1
  tmp="$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")"
  render_conf >"$tmp"
  chmod 644 "$tmp"
  if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
    CONF_CHANGED=0
    rm -f "$tmp"
  else
    mv -f "$tmp" "$CONF"
  fi
  if ((NGPUS > 0)); then
    local i
    for ((i = 0; i < NGPUS; i++)); do
      # fake GPUs: SLURM wants character devices; clones of /dev/null
      [[ -c "/dev/smet-fakegpu$i" ]] || mknod -m 666 "/dev/smet-fakegpu$i" c 1 3
    done
    printf '%s\nNodeName=%s Name=gpu File=/dev/smet-fakegpu[0-%d]\n' "$MARKER" "$(node_name)" "$((NGPUS - 1))" >"$GRES_CONF"
  elif [[ -f "$GRES_CONF" ]] && grep -qF "$MARKER" "$GRES_CONF"; then
    rm -f "$GRES_CONF"
  fi
}

munge_up() {
  pid_alive "$MUNGE_PID" munged && return 0
  install -d -o munge -g munge -m 755 "$MUNGE_DIR"
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  # --force: start even if a crashed munged left its socket behind
  runuser -u munge -- munged --force --pid-file="$MUNGE_PID"
  wait_for "$TIMEOUT" munged pid_alive "$MUNGE_PID" munged || die "munged did not start"
}

node_idle() {
  local st
  st="$(sinfo -h -n "$(node_name)" -o %t 2>/dev/null)" || return 1
  [[ "$st" == idle* || "$st" == mix* || "$st" == alloc* ]]
}

is_up() {
  pid_alive "$MUNGE_PID" munged && pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd && node_idle
}

cmd_up() {
  installed || die "SLURM is not installed: run scripts/slurm-local.sh install"
  need_root up
  write_conf
  if ((CONF_CHANGED)) && { pid_alive "$CTLD_PID" slurmctld || pid_alive "$SLURMD_PID" slurmd; }; then
    say "slurm.conf changed: restarting the daemons"
    stop_daemons
  fi
  if is_up; then
    say "already up: $(sinfo -h -o '%P %t %C' | tr '\n' ' ')"
    return 0
  fi
  munge_up
  if ! pid_alive "$CTLD_PID" slurmctld; then
    # -c: start with an empty queue (no jobs left from an earlier session)
    slurmctld -c || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
    wait_for "$TIMEOUT" slurmctld scontrol ping || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
  fi
  if ! pid_alive "$SLURMD_PID" slurmd; then
    slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
  fi
  if ! wait_for "$TIMEOUT" "node $(node_name) to become idle" node_idle; then
    # a node left DOWN by an earlier crash: resume it once, then wait again
    scontrol update nodename="$(node_name)" state=resume >/dev/null 2>&1 || true
    wait_for "$TIMEOUT" "node $(node_name) to become idle" node_idle ||
      die "node not idle: $(sinfo -h -N -o '%N %t %E' 2>&1) (see $LOG_DIR/)"
  fi
  say "up: $(sinfo -h -o 'partition %P %t cpus(A/I/O/T)=%C' | tr '\n' ' ')"
}

# stop_pid PIDFILE NAME: SIGTERM the daemon named in PIDFILE, wait, SIGKILL if it hangs
stop_pid() {
  local file="$1" name="$2" pid
  pid_alive "$file" "$name" || { rm -f "$file"; return 0; }
  pid="$(tr -dc '0-9' <"$file")"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for "$TIMEOUT" "$name (pid $pid) to exit" bash -c "! kill -0 $pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_daemons() {
  stop_pid "$SLURMD_PID" slurmd
  stop_pid "$CTLD_PID" slurmctld
}

no_jobs() { [[ -z "$(squeue -h -o %i 2>/dev/null)" ]]; }

cmd_down() {
  if pid_alive "$CTLD_PID" slurmctld && scontrol ping >/dev/null 2>&1; then
    local jobs
    jobs="$(squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      wait_for "$TIMEOUT" "cancelled jobs to end" no_jobs || true
    fi
  fi
  stop_daemons
  stop_pid "$MUNGE_PID" munged
  say "down"
}

cmd_status() {
  local d rc=0
  for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
    if pid_alive "${d#*:}" "${d%%:*}"; then
      echo "${d%%:*}: running (pid $(tr -dc '0-9' <"${d#*:}"))"
    else
      echo "${d%%:*}: stopped"
      rc=3
    fi
  done
  if ((rc == 0)); then
    sinfo -o '%P %a %t %C %G' 2>&1 || rc=3
    squeue 2>&1 || true
    node_idle || rc=3
  fi
  return "$rc"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  conf) render_conf ;;   # print the slurm.conf `up` would write
  *)
    echo "usage: $0 install|up|down|status" >&2
    exit 2
    ;;
esac
