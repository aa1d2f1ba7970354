#!/usr/bin/env python3
"""The bash completion of the three programs, driven as bash does: the file
is sourced, COMP_WORDS/COMP_CWORD/COMP_LINE set, the completion function
called and COMPREPLY checked; and its option, command, level and -o lists
are compared with the programs' --help, so they cannot drift apart."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpopts as H  # noqa: E402

SRC = os.path.join(os.environ.get('QB_SOURCE_DIR', '.'), 'contrib', 'completion',
                   'qmpbackupfs.bash')
FUNCS = {'qmpbackup': '_qmpbackup', 'qmprebase': '_qmprebase', 'qmpbackupfs': '_qmpbackupfs'}
failures = []


def fail(msg):
    """Record one failure (all are reported)."""
    failures.append(msg)


def bash(script):
    """Run SCRIPT in a non-interactive bash after sourcing the completion; its stdout."""
    p = subprocess.run(['bash', '--norc', '--noprofile', '-c',
                        'set -u; source %s || exit 9\n%s' % (shlex.quote(SRC), script)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    if p.returncode != 0 or p.stderr:
        fail('bash failed (%d) on %r: %s' % (p.returncode, script, p.stderr.strip()))
    return p.stdout


def complete(words):
    """COMPREPLY for the command line WORDS, the cursor at the end of the last word."""
    line = ' '.join(words)
    script = ('COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=%s; COMP_POINT=${#COMP_LINE}\n'
              '%s %s %s %s\nprintf "%%s\\n" "${COMPREPLY[@]}"'
              % (' '.join(shlex.quote(w) for w in words), len(words) - 1, shlex.quote(line),
                 FUNCS[words[0]], shlex.quote(words[0]), shlex.quote(words[-1]),
                 shlex.quote(words[-2] if len(words) > 1 else '')))
    return [w for w in bash(script).split('\n') if w]


def expect(words, want, exact=True):
    """Fail unless completing WORDS offers WANT (exactly, or at least)."""
    got = complete(words)
    ok = sorted(got) == sorted(want) if exact else set(want) <= set(got)
    if not ok:
        fail('%s<TAB>: offered %s, expected %s%s' % (' '.join(words), sorted(got), sorted(want),
                                                    '' if exact else ' among them'))


def check_scripted(tmp):
    """Completions a user would type, one by one."""
    os.mkdir(os.path.join(tmp, 'store1'))
    open(os.path.join(tmp, 'store2.log'), 'w').close()
    for prog in FUNCS:
        out = bash('complete -p %s' % prog).strip()
        if out != 'complete -F %s %s' % (FUNCS[prog], prog):
            fail('complete -p %s: %r' % (prog, out))
    t = tmp + '/st'
    expect(['qmpbackup', 'ba'], ['backup'])
    expect(['qmpbackup', ''], ['backup', 'info', 'cleanup'])
    expect(['qmpbackup', '--socket', '/run/x.qmp', 'c'], ['cleanup'])
    expect(['qmpbackup', 'backup', '--lev'], ['--level'])
    expect(['qmpbackup', 'backup', '--level', ''], ['full', 'inc', 'auto', 'copy'])
    expect(['qmpbackup', '--socket', '/run/x.qmp', 'backup', '-l', 'i'], ['inc'])
    expect(['qmpbackup', 'info', '--show', ''], ['blockdev', 'bitmaps', 'store'])
    expect(['qmpbackup', 'backup', '-t', t], [tmp + '/store1'])
    expect(['qmpbackup', 'backup', '--target', t], [tmp + '/store1'])
    expect(['qmpbackup', '--logfile', t], [tmp + '/store1', tmp + '/store2.log'])
    expect(['qmpbackup', 'cleanup', '--rem'], ['--remove-bitmaps', '--remove-bitmap'])
    expect(['qmpbackup', 'backup', '-l', 'full', ''], [])
    expect(['qmprebase', ''], ['rebase', 'merge', 'list', 'prune', 'remove', 'sync', 'verify'])
    expect(['qmprebase', 'verify', '--p'], ['--point'])
    expect(['qmprebase', 'prune', '--keep-d'], ['--keep-daily'])
    expect(['qmprebase', 'remove', '--p'], ['--point'])
    expect(['qmprebase', 'sync', '--'], ['--from', '--to', '--vm', '--dry-run', '--help'])
    expect(['qmprebase', 'm'], ['merge'])
    expect(['qmprebase', 'merge', '--t'], ['--targetfile'])
    expect(['qmprebase', 'merge', '--targetfile', t], [tmp + '/store1', tmp + '/store2.log'])
    expect(['qmprebase', 'rebase', '--dir', t], [tmp + '/store1'])
    expect(['qmprebase', 'rebase', '--d'], ['--dir', '--dry-run'])
    expect(['qmpbackupfs', t], [tmp + '/store1'])
    expect(['qmpbackupfs', 'STORE', 'MNT', '-o', ''],
           ['sockets=', 'vm=', 'monthly', 'speed=', 'fleece=', 'compress', 'include=', 'exclude=',
            'on_success=', 'on_failure=', 'notify_timeout=', 'keep=', 'ro', 'names=', 'allow_other'])
    expect(['qmpbackupfs', 'STORE', 'MNT', '-o', 'names='], ['names=safe', 'names=iso'])
    expect(['qmpbackupfs', 'STORE', 'MNT', '-o', 'monthly,names=i'], ['monthly,names=iso'])
    expect(['qmpbackupfs', 'STORE', 'MNT', '-o', 'sockets=/run/qemu,mo'],
           ['sockets=/run/qemu,monthly'])
    expect(['qmpbackupfs', 'STORE', 'MNT', '-o', 'sockets=' + t], ['sockets=' + tmp + '/store1'])
    expect(['qmpbackupfs', 'STORE', 'MNT', '--he'], ['--help'])


def global_part(text):
    """The "Global options" part of qmpbackup's help."""
    m = re.search(r'Global options.*?\n\n', text, re.S)
    if not m:
        fail('qmpbackup --help has no "Global options" part')
        return ''
    return m.group(0)


def check_drift():
    """The completion's lists equal what the programs print in --help."""
    top = H.help_text('qmpbackup')
    glob = H.options(global_part(top))
    expect(['qmpbackup', '-'], glob)
    for cmd in ['backup', 'info', 'cleanup']:
        expect(['qmpbackup', cmd, '-'], H.options(H.help_text('qmpbackup', cmd)) | glob)
    expect(['qmpbackup', ''], H.help_commands(top))
    levels = re.search(r'--level ([a-z|]+)', H.help_text('qmpbackup', 'backup')).group(1)
    expect(['qmpbackup', 'backup', '-l', ''], levels.split('|'))
    show = re.findall(r'^  --show (\w+)', H.help_text('qmpbackup', 'info'), re.M)
    expect(['qmpbackup', 'info', '--show', ''], show)
    top = H.help_text('qmprebase')
    expect(['qmprebase', ''], H.help_commands(top))
    expect(['qmprebase', '-'], ['-h', '--help', '-V', '--version'])
    for cmd in H.COMMANDS['qmprebase'][1:]:
        expect(['qmprebase', cmd, '-'], H.options(H.help_text('qmprebase', cmd)))
    own = H.own_help('qmpbackupfs')
    expect(['qmpbackupfs', 'S', 'M', '-'], H.options(own))
    got = {w.rstrip('=') for w in complete(['qmpbackupfs', 'S', 'M', '-o', ''])}
    if got != H.mount_options(own):
        fail('qmpbackupfs -o <TAB> offers %s, --help prints %s'
             % (sorted(got), sorted(H.mount_options(own))))


BASH_COMPLETION = '/usr/share/bash-completion/bash_completion'


def check_installed(tmp):
    """`meson install` puts the completion under each program's name in a
    bash-completion/completions folder, and bash-completion's loader, finding
    it there, registers the program's function."""
    build = os.environ.get('QB_BUILD_DIR')
    if not build or not shutil.which('meson'):
        print('note: no build dir or meson: install paths not checked')
        return
    p = subprocess.run(['meson', 'introspect', build, '--installed'], stdout=subprocess.PIPE,
                       text=True, timeout=60)
    dests = json.loads(p.stdout).values() if p.returncode == 0 else []
    dirs = {os.path.dirname(d) for d in dests
            if os.path.basename(d) in FUNCS and d.endswith('/bash-completion/completions/'
                                                          + os.path.basename(d))}
    names = {os.path.basename(d) for d in dests if os.path.dirname(d) in dirs}
    if len(dirs) != 1 or not set(FUNCS) <= names:
        fail('meson installs the completion as %s, want qmpbackupfs, qmpbackup and qmprebase '
             'in one bash-completion/completions folder' % sorted(d for d in dests
                                                                 if 'completion' in d))
        return
    if not os.path.exists(BASH_COMPLETION):
        print('note: bash-completion not installed: its loader not tried')
        return
    comp = os.path.join(tmp, 'share', 'bash-completion', 'completions')
    os.makedirs(comp)
    shutil.copy(SRC, os.path.join(comp, 'qmpbackupfs'))
    for prog in ['qmpbackup', 'qmprebase']:
        os.symlink('qmpbackupfs', os.path.join(comp, prog))
    for prog in FUNCS:
        p = subprocess.run(['bash', '--norc', '--noprofile', '-c',
                            'source %s; __load_completion %s; complete -p %s'
                            % (BASH_COMPLETION, prog, prog)],
                           env=dict(os.environ, XDG_DATA_DIRS=os.path.join(tmp, 'share')),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        if p.stdout.strip() != 'complete -F %s %s' % (FUNCS[prog], prog):
            fail('bash-completion did not load the completion of %s: %s' % (prog, p.stdout.strip()))


def main():
    """Run every check; exit 1 listing each failure, 77 without bash."""
    if not shutil.which('bash'):
        print('SKIP: bash not installed')
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        check_scripted(tmp)
    with tempfile.TemporaryDirectory() as tmp:
        check_installed(tmp)
    check_drift()
    for f in failures:
        print('FAIL:', f)
    if failures:
        return 1
    print('completion: scripted completions and --help lists agree')
    return 0


if __name__ == '__main__':
    sys.exit(main())
