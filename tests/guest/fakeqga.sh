# Shell helpers around tests/guest/fakeqga.py (a fake guest agent).  Source
# after tests/lib/vm.sh (needs $T, qb_register_pid, qb_die) and set
# QGASTATUS to the qgastatus program.
#
#   fake_start SOCKET [fakeqga.py options...]   start (or restart) the fake on SOCKET
#   fake_wait PATTERN [SECONDS]                 wait for a line of its log
#   fake_assert_thawed WHAT [SECONDS]           a thaw reached it and it says thawed

# Start the fake agent on SOCKET with OPTIONS, stopping the one started
# before; its log is $FAKE_LOG (fresh), its pid $FAKE_PID.
fake_start() {
  local sock=$1 i
  shift
  if [ -n "${FAKE_PID:-}" ]; then
    kill "$FAKE_PID" 2>/dev/null || true
    wait "$FAKE_PID" 2>/dev/null || true
  fi
  FAKE_N=$(( ${FAKE_N:-0} + 1 ))
  FAKE_LOG=$T/fakeqga.$FAKE_N.log
  FAKE_SOCK=$sock
  rm -f "$sock"
  python3 "$QB_SOURCE_DIR/tests/guest/fakeqga.py" "$sock" "$FAKE_LOG" "$@" 2>>"$T/fakeqga.err" &
  FAKE_PID=$!
  qb_register_pid "$FAKE_PID"
  for ((i = 0; i < 100; i++)); do
    grep -q listening "$FAKE_LOG" 2>/dev/null && [ -S "$sock" ] && return 0
    sleep 0.1
  done
  qb_die "the fake guest agent did not start: $(cat "$T/fakeqga.err")"
}

# Wait (at most SECONDS, default 30) until the fake's log has a line matching PATTERN.
fake_wait() {
  local pat=$1 limit=$(( ${2:-30} * 10 )) i
  for ((i = 0; i < limit; i++)); do
    grep -q -- "$pat" "$FAKE_LOG" && return 0
    sleep 0.1
  done
  cat "$FAKE_LOG" >&2
  qb_die "no '$pat' in the fake agent's log within ${2:-30} s"
}

# Fail unless, within SECONDS (default 60), the fake ran a thaw after its
# last freeze and says "thawed" both in its state file and over the
# protocol (guest-fsfreeze-status through qgastatus).  WHAT names the case.
fake_assert_thawed() {
  local what=$1 limit=$(( ${2:-60} * 10 )) i s
  for ((i = 0; i < limit; i++)); do
    if awk '/done guest-fsfreeze-freeze/ { f = NR } /done guest-fsfreeze-thaw/ { t = NR }
            END { exit !(t > f) }' "$FAKE_LOG" \
       && [ "$(cat "$FAKE_LOG.state")" = thawed ]; then
      s=$("$QGASTATUS" "$FAKE_SOCK" status) || qb_die "$what: the fake agent did not answer status: $s"
      [ "$s" = thawed ] || qb_die "$what: status over the protocol is '$s'"
      qb_log "$what: thawed ($(grep -c 'recv guest-fsfreeze-thaw' "$FAKE_LOG") thaw(s) received)"
      return 0
    fi
    sleep 0.1
  done
  cat "$FAKE_LOG" >&2
  qb_die "$what: the guest was left $(cat "$FAKE_LOG.state") (no thaw after the freeze within ${2:-60} s)"
}

# Fail unless every running thaw guard holds only /dev/null on 0-2 and at
# most one socket on 3 (its channel, or later its own agent connection): no
# inherited agent, QMP or FUSE descriptor.
fake_check_guards() {
  local p fds
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = qb-thawguard ] || continue
    fds=$(shopt -s nullglob; cd "$p/fd" 2>/dev/null && for f in *; do
            printf '%s=%s ' "$f" "$(readlink "$f")"; done) || continue
    [ -z "$fds" ] && continue   # exited (a zombie) or gone meanwhile
    [[ "$fds" =~ ^"0=/dev/null 1=/dev/null 2=/dev/null "("3=socket:["[0-9]+"] ")?$ ]] \
      || qb_die "thaw guard ${p#/proc/} holds more than its channel: $fds"
    GUARDS_SEEN=$(( ${GUARDS_SEEN:-0} + 1 ))
  done
}
