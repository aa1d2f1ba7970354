# bash completion for qmpbackupfs, qmpbackup and qmprebase.
# Needs only bash (complete/compgen); installed where bash-completion loads
# it on demand, under each program's name.  The option lists below are
# compared with the programs' --help by the test suite (tests/docs).

_qmpbackup_opts_global='--socket --agent-socket --debug -L --logfile --syslog -h --help -V --version'
_qmpbackup_opts_backup='-l --level -t --target --monthly --quiesce --quisce --no-quiesce --pause
  -i --include -e --exclude --speed --speed-limit --fleece-dir --compress --include-raw -q --quiet'
_qmpbackup_opts_info='-t --target --show --json'
_qmpbackup_opts_cleanup='--remove-bitmaps --remove-bitmap'
_qmpbackup_commands='backup info cleanup'
_qmpbackup_levels='full inc auto copy'
_qmpbackup_show='blockdev bitmaps store'

_qmprebase_commands='rebase merge list prune remove sync verify'
_qmprebase_opts_common='-h --help -V --version'
_qmprebase_opts_rebase='--dir --until --dry-run'
_qmprebase_opts_merge='--dir --targetfile --until --force'
_qmprebase_opts_list='--dir --json'
_qmprebase_opts_prune='--dir --keep-last --keep-hourly --keep-daily --keep-weekly --keep-monthly --keep-yearly --keep-within --dry-run --json'
_qmprebase_opts_remove='--dir --point --dry-run'
_qmprebase_opts_sync='--from --to --vm --dry-run'
_qmprebase_opts_verify='--dir --point --json'

_qmpbackupfs_opts='-o -f -d -h --help -V --version'
_qmpbackupfs_mount_opts='sockets= vm= monthly speed= fleece= compress include= exclude= on_success= on_failure= notify_timeout= keep= ro names= allow_other'

# Set COMPREPLY to the words of WORDLIST ($1) that start with $2.
_qmpbackupfs_words() {
  local IFS=$' \t\n'
  COMPREPLY=($(compgen -W "$1" -- "$2"))
}

# Set COMPREPLY to the directories (or files, with $1 = -f) that start with $2.
_qmpbackupfs_paths() {
  local IFS=$'\n'
  compopt -o filenames 2>/dev/null
  if [ "$1" = -d ]; then
    COMPREPLY=($(compgen -d -- "$2"))
  else
    COMPREPLY=($(compgen -f -- "$2"))
  fi
}

# Complete qmpbackup: its commands, the global options and each command's own,
# levels after --level/-l, --show values, directories after --target/-t,
# files after --logfile/-L and the socket options.
_qmpbackup() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  local cmd='' i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${COMP_WORDS[i]}
    case $w in
      --socket|--agent-socket|-L|--logfile|-l|--level|-t|--target|-i|--include|-e|--exclude|--speed|--speed-limit|--fleece-dir|--show)
        ((i++)) ;;
      -*) ;;
      *) [ -z "$cmd" ] && cmd=$w ;;
    esac
  done
  COMPREPLY=()
  case $prev in
    -l|--level) _qmpbackupfs_words "$_qmpbackup_levels" "$cur"; return 0 ;;
    --show) _qmpbackupfs_words "$_qmpbackup_show" "$cur"; return 0 ;;
    -t|--target) _qmpbackupfs_paths -d "$cur"; return 0 ;;
    --fleece-dir) _qmpbackupfs_words off "$cur"; _qmpbackupfs_paths -d "$cur"; return 0 ;;
    -L|--logfile|--socket|--agent-socket) _qmpbackupfs_paths -f "$cur"; return 0 ;;
    -i|--include|-e|--exclude|--speed|--speed-limit) return 0 ;;
  esac
  if [[ $cur == -* ]]; then
    case $cmd in
      backup) _qmpbackupfs_words "$_qmpbackup_opts_global $_qmpbackup_opts_backup" "$cur" ;;
      info) _qmpbackupfs_words "$_qmpbackup_opts_global $_qmpbackup_opts_info" "$cur" ;;
      cleanup) _qmpbackupfs_words "$_qmpbackup_opts_global $_qmpbackup_opts_cleanup" "$cur" ;;
      *) _qmpbackupfs_words "$_qmpbackup_opts_global" "$cur" ;;
    esac
  elif [ -z "$cmd" ]; then
    _qmpbackupfs_words "$_qmpbackup_commands" "$cur"
  fi
  return 0
}

# Complete qmprebase: its commands, each command's options, directories after
# --dir, files after --targetfile.
_qmprebase() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  local cmd='' i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${COMP_WORDS[i]}
    case $w in
      --dir|--targetfile|--until|--point|--keep-*|--from|--to|--vm) ((i++)) ;;
      -*) ;;
      *) [ -z "$cmd" ] && cmd=$w ;;
    esac
  done
  COMPREPLY=()
  case $prev in
    --dir|--from|--to) _qmpbackupfs_paths -d "$cur"; return 0 ;;
    --vm) return 0 ;;
    --targetfile) _qmpbackupfs_paths -f "$cur"; return 0 ;;
    --until|--point|--keep-*) return 0 ;;
  esac
  if [ -z "$cmd" ]; then
    if [[ $cur == -* ]]; then
      _qmpbackupfs_words "$_qmprebase_opts_common" "$cur"
    else
      _qmpbackupfs_words "$_qmprebase_commands" "$cur"
    fi
  elif [[ $cur == -* ]]; then
    case $cmd in
      rebase) _qmpbackupfs_words "$_qmprebase_opts_rebase $_qmprebase_opts_common" "$cur" ;;
      merge) _qmpbackupfs_words "$_qmprebase_opts_merge $_qmprebase_opts_common" "$cur" ;;
      list) _qmpbackupfs_words "$_qmprebase_opts_list $_qmprebase_opts_common" "$cur" ;;
      prune) _qmpbackupfs_words "$_qmprebase_opts_prune $_qmprebase_opts_common" "$cur" ;;
      remove) _qmpbackupfs_words "$_qmprebase_opts_remove $_qmprebase_opts_common" "$cur" ;;
      sync) _qmpbackupfs_words "$_qmprebase_opts_sync -h --help" "$cur" ;;
      verify) _qmpbackupfs_words "$_qmprebase_opts_verify -h --help" "$cur" ;;
    esac
  fi
  return 0
}

# Complete qmpbackupfs: STORE and MOUNTPOINT as directories, its options, the
# -o option names (also after a comma), a directory after -o sockets=.
_qmpbackupfs() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  COMPREPLY=()
  if [ "$prev" = -o ]; then
    local head='' last=$cur
    if [[ $cur == *,* ]]; then
      head=${cur%,*},
      last=${cur##*,}
    fi
    if [[ $last == sockets=* && -z $head ]]; then
      local IFS=$'\n' d
      compopt -o filenames 2>/dev/null
      for d in $(compgen -d -- "${last#sockets=}"); do COMPREPLY+=("sockets=$d"); done
      return 0
    fi
    local IFS=$' \t\n' o words=$_qmpbackupfs_mount_opts
    [[ $last == names=* ]] && words='names=safe names=iso'
    for o in $(compgen -W "$words" -- "$last"); do
      COMPREPLY+=("$head$o")
    done
    compopt -o nospace 2>/dev/null
    return 0
  fi
  if [[ $cur == -* ]]; then
    _qmpbackupfs_words "$_qmpbackupfs_opts" "$cur"
  else
    _qmpbackupfs_paths -d "$cur"
  fi
  return 0
}

complete -F _qmpbackup qmpbackup
complete -F _qmprebase qmprebase
complete -F _qmpbackupfs qmpbackupfs
