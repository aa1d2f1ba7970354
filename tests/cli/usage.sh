#!/usr/bin/env bash
# The command-line conventions: -h/--help and -V/--version on the program and
# on every command (exit 0, on stdout); a usage error is one line saying what
# is wrong plus a hint to the help, on stderr, exit 2, never the whole help.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need_cli
qb_tmpdir

version=$("$QMPBACKUP" --version)
[[ $version == "qmpbackup "* ]] || qb_die "--version printed '$version'"

# expect_ok ARGS...: exit 0, output on stdout, nothing on stderr.
expect_ok() {
  local rc=0
  "$QMPBACKUP" "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ $rc -eq 0 ] || qb_die "qmpbackup $* exited $rc: $(cat "$T/err")"
  [ -s "$T/out" ] || qb_die "qmpbackup $* printed nothing on stdout"
  [ ! -s "$T/err" ] || qb_die "qmpbackup $* wrote on stderr: $(cat "$T/err")"
}
for cmd in "" backup info cleanup; do
  for h in -h --help; do
    expect_ok $cmd $h
    grep -q '^usage: qmpbackup' "$T/out" || qb_die "qmpbackup $cmd $h: no usage line: $(head -2 "$T/out")"
  done
  for v in -V --version; do
    expect_ok $cmd $v
    [ "$(cat "$T/out")" = "$version" ] || qb_die "qmpbackup $cmd $v printed $(cat "$T/out")"
  done
done
# Help after other options, and before the command with --socket.
expect_ok --socket /nonexistent backup --level full -h
expect_ok --socket /nonexistent -h

# expect_usage HINT-CMD PATTERN ARGS...: exit 2, two lines on stderr: the
# message (matching PATTERN) and "Try 'qmpbackup[ CMD] --help' ...".
expect_usage() {
  local hint=$1 pat=$2 rc=0
  shift 2
  "$QMPBACKUP" "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ $rc -eq 2 ] || qb_die "qmpbackup $* exited $rc, expected 2"
  [ ! -s "$T/out" ] || qb_die "qmpbackup $*: a usage error printed on stdout: $(cat "$T/out")"
  [ "$(wc -l < "$T/err")" -eq 2 ] || qb_die "qmpbackup $*: expected 2 lines on stderr, got: $(cat "$T/err")"
  head -1 "$T/err" | grep -q "^qmpbackup: $pat" || qb_die "qmpbackup $*: message '$(head -1 "$T/err")' does not match '$pat'"
  [ "$(tail -1 "$T/err")" = "Try 'qmpbackup${hint:+ $hint} --help' for more information." ] \
    || qb_die "qmpbackup $*: hint line '$(tail -1 "$T/err")'"
}
S=(--socket "$T/none.qmp")
expect_usage "" "no command given" 
expect_usage "" "no command given" "${S[@]}"
expect_usage "" "unknown command \"frobnicate\"" "${S[@]}" frobnicate
expect_usage "" "unknown or ambiguous option '--bogus'" --bogus
expect_usage "" "unknown option '-z'" -z
expect_usage "" "option '--socket' needs an argument" --socket
expect_usage backup "--socket is required" backup -l full -t "$T/store/vm"
expect_usage backup "--level is required" "${S[@]}" backup -t "$T/store/vm"
expect_usage backup "--target is required" "${S[@]}" backup -l full
expect_usage backup "option '--level' needs an argument" "${S[@]}" backup --level
expect_usage backup "option '-l' needs an argument\|option '-l'" "${S[@]}" backup -l
expect_usage backup "unknown option '-x'" "${S[@]}" backup -l full -t "$T/store/vm" -x
expect_usage backup "unknown or ambiguous option '--no-such'" "${S[@]}" backup --no-such
expect_usage backup "unexpected argument \"extra\"" "${S[@]}" backup -l full -t "$T/store/vm" extra
expect_usage backup "unknown backup level \"weekly\"" "${S[@]}" backup -l weekly -t "$T/store/vm"
expect_usage backup "bad --speed" "${S[@]}" backup -l full -t "$T/store/vm" --speed-limit 12Q
expect_usage backup "--pause and --quiesce exclude each other" "${S[@]}" backup -l full -t "$T/store/vm" --pause --quiesce
expect_usage backup "--pause and --quiesce exclude each other" "${S[@]}" backup -l full -t "$T/store/vm" --pause --quisce
expect_usage backup "--agent-socket tcp:127.0.0.1:1: the guest agent must be a unix socket" "${S[@]}" --agent-socket tcp:127.0.0.1:1 backup -l full -t "$T/store/vm"
expect_usage backup "--uuid is not supported" "${S[@]}" backup -l full -t "$T/store/vm" --uuid testme
expect_usage backup "--target .*: its last part must be the VM's name" "${S[@]}" backup -l full -t "$T/store/.hidden"
expect_usage info "--show frob: expected blockdev, bitmaps or store" "${S[@]}" info --show frob
expect_usage info "--socket is required" info
expect_usage info "--socket is required" info --show blockdev -t "$T/store/vm"
expect_usage info "--show store needs --target" "${S[@]}" info --show store
expect_usage cleanup "unknown or ambiguous option '--remove-all'" "${S[@]}" cleanup --remove-all
expect_usage cleanup "--socket is required" cleanup
# A control character in an argument is escaped in the one line.
expect_usage "" 'unknown command "a\\x1b\[31mb"' "${S[@]}" $'a\e[31mb'
# A bad tcp: address is a usage error too (exit 2), with the form to use.
rc=0; "$QMPBACKUP" --socket tcp:nohostport cleanup 2>"$T/err" || rc=$?
[ $rc -eq 2 ] && grep -q "expected tcp:HOST:PORT" "$T/err" || qb_die "bad tcp address: exit $rc, $(cat "$T/err")"
# Nobody listening: exit 3 for a unix socket and a TCP port alike.
rc=0; "$QMPBACKUP" --socket "$T/none.qmp" cleanup 2>/dev/null || rc=$?
[ $rc -eq 3 ] || qb_die "missing socket: exit $rc, expected 3"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rc=0; "$QMPBACKUP" --socket "tcp:127.0.0.1:$port" cleanup 2>"$T/err" || rc=$?
[ $rc -eq 3 ] || qb_die "closed TCP port: exit $rc, expected 3: $(cat "$T/err")"
echo "usage: help, version and one-line usage errors ok"
