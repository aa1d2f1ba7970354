#!/usr/bin/env python3
"""The man pages render without a warning, and document exactly what the
programs accept: every option, command, mount option and exit code printed
by a program's or command's --help is in its page, and every option in a
page's OPTIONS sections and SYNOPSIS is one the program prints in --help."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpopts as H  # noqa: E402

DOC = os.path.join(os.environ.get('QB_SOURCE_DIR', '.'), 'doc')
PAGES = {'qmpbackup': 'qmpbackup.1', 'qmprebase': 'qmprebase.1', 'qmpbackupfs': 'qmpbackupfs.8'}
REQUIRED = ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'EXIT STATUS', 'ENVIRONMENT', 'FILES',
            'EXAMPLES', 'SEE ALSO']
failures = []


def fail(msg):
    """Record one failure (all are reported)."""
    failures.append(msg)


def check_render(path):
    """PATH renders with man(1) and groff(1) without a single warning."""
    env = dict(os.environ, MANWIDTH='80', LC_ALL='C.UTF-8')
    p = subprocess.run(['man', '-l', '--warnings', path], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    if p.returncode != 0 or p.stderr.strip():
        fail('%s: man -l --warnings says (%d): %s' % (path, p.returncode, p.stderr.strip()))
    p = subprocess.run(['groff', '-man', '-ww', '-z', path], stderr=subprocess.PIPE,
                       text=True, timeout=60)
    if p.returncode != 0 or p.stderr.strip():
        fail('%s: groff -ww says: %s' % (path, p.stderr.strip()))


def need_subset(what, have, want):
    """Fail for every name in WANT missing from HAVE."""
    missing = sorted(set(want) - set(have))
    if missing:
        fail('%s: %s' % (what, ' '.join(missing)))


def check_qmpbackup(secs):
    """qmpbackup(1): GLOBAL/BACKUP/INFO/CLEANUP OPTIONS against each --help."""
    glob_help = H.options(H.help_text('qmpbackup'))
    glob_page = H.options(secs.get('GLOBAL OPTIONS', ''))
    accepted = set(glob_help)
    all_page = set().union(*(H.options(t) for k, t in secs.items() if k.endswith('OPTIONS')))
    for cmd, sec in [('', 'GLOBAL OPTIONS'), ('backup', 'BACKUP OPTIONS'),
                     ('info', 'INFO OPTIONS'), ('cleanup', 'CLEANUP OPTIONS')]:
        if sec not in secs:
            fail('qmpbackup.1 has no section %s' % sec)
            continue
        hopts = H.options(H.help_text('qmpbackup', cmd))
        if not hopts:
            fail('qmpbackup %s --help names no option' % cmd)
        accepted |= hopts
        popts = H.options(secs[sec])
        # the program's own help names the commands' options in passing
        where = all_page if cmd == '' else popts | glob_page
        need_subset('qmpbackup %s --help options missing from qmpbackup.1 %s' % (cmd, sec),
                    where, hopts)
        need_subset('qmpbackup.1 %s documents options qmpbackup %s --help does not print'
                    % (sec, cmd), hopts | glob_help, popts)
    need_subset('qmpbackup.1 SYNOPSIS names options no --help prints', accepted,
                H.options(secs.get('SYNOPSIS', '')))


def check_qmprebase(secs):
    """qmprebase(1): OPTIONS against the union of every command's --help."""
    accepted = set()
    for cmd in H.COMMANDS['qmprebase']:
        hopts = H.options(H.help_text('qmprebase', cmd))
        if not hopts:
            fail('qmprebase %s --help names no option' % cmd)
        need_subset('qmprebase %s --help options missing from qmprebase.1 OPTIONS' % cmd,
                    H.options(secs.get('OPTIONS', '')), hopts)
        accepted |= hopts
    need_subset('qmprebase.1 OPTIONS documents options no --help prints', accepted,
                H.options(secs.get('OPTIONS', '')))
    need_subset('qmprebase.1 SYNOPSIS names options no --help prints', accepted,
                H.options(secs.get('SYNOPSIS', '')))


def check_qmpbackupfs(secs):
    """qmpbackupfs(8): MOUNT OPTIONS (-o) and GENERAL OPTIONS against --help."""
    own = H.own_help('qmpbackupfs')
    full = H.help_text('qmpbackupfs')
    mount_help = H.mount_options(own)
    if not mount_help:
        fail('qmpbackupfs --help names no -o option')
    mount_page = H.mount_options(secs.get('MOUNT OPTIONS', ''))
    need_subset('qmpbackupfs --help -o options missing from qmpbackupfs.8 MOUNT OPTIONS',
                mount_page, mount_help)
    need_subset('qmpbackupfs.8 MOUNT OPTIONS documents -o options --help does not print',
                mount_help, mount_page)
    need_subset('qmpbackupfs.8 GENERAL OPTIONS names -o options --help does not print',
                H.mount_options(full), H.mount_options(secs.get('GENERAL OPTIONS', '')))
    gen_page = H.options(secs.get('GENERAL OPTIONS', ''))
    need_subset('qmpbackupfs --help options missing from qmpbackupfs.8 GENERAL OPTIONS',
                gen_page, H.options(own) - {'-o'})
    need_subset('qmpbackupfs.8 GENERAL OPTIONS documents options --help does not print',
                H.options(full), gen_page)
    need_subset('qmpbackupfs.8 SYNOPSIS names -o options --help does not print',
                mount_help, H.mount_options(secs.get('SYNOPSIS', '')))
    words = re.search(r'echo ([a-z|]+) >', own)
    if not words:
        fail('qmpbackupfs --help shows no control file words (echo WORD|... >)')
    for word in (words.group(1).split('|') if words else []) + ['quiesce', 'noquiesce']:
        if not re.search(r'^\.B %s$' % word, open(os.path.join(DOC, 'qmpbackupfs.8')).read(), re.M):
            fail('qmpbackupfs.8 CONTROL FILE does not describe the word %s' % word)
    for e in ['EIO', 'EBUSY', 'EHOSTDOWN', 'EINVAL', 'ENOSPC', 'EINTR', 'ESHUTDOWN']:
        if e not in secs.get('CONTROL FILE', ''):
            fail('qmpbackupfs.8 CONTROL FILE does not name the answer %s' % e)
    for n in ['.status', '.metrics', 'backup', 'status', 'restore/', 'latest.img', 'chain/']:
        if n not in secs.get('THE MOUNTED TREE', ''):
            fail('qmpbackupfs.8 THE MOUNTED TREE does not show %s' % n)


def main():
    """Run every check; exit 1 listing each failure, 77 without man/groff."""
    for tool in ['man', 'groff']:
        if not shutil.which(tool):
            print('SKIP: %s not installed (contrib/install-deps.sh installs man-db, groff-base)'
                  % tool)
            return 77
    for prog, page in PAGES.items():
        path = os.path.join(DOC, page)
        check_render(path)
        secs = H.page_sections(path)
        need_subset('%s lacks sections' % page, secs, REQUIRED)
        if prog == 'qmpbackupfs' and 'SECURITY' not in secs:
            fail('qmpbackupfs.8 has no SECURITY section')
        top = H.help_text(prog)
        cmds = H.help_commands(top)
        words = set(re.findall(r'[a-z]+', secs.get('COMMANDS', '')))
        need_subset('%s commands (--help) missing from %s COMMANDS' % (prog, page), words, cmds)
        codes = set(re.findall(r'^(\d+)\s*$', secs.get('EXIT STATUS', ''), re.M))
        need_subset('%s exit codes (--help) missing from %s EXIT STATUS' % (prog, page), codes,
                    H.help_exit_codes(top))
        {'qmpbackup': check_qmpbackup, 'qmprebase': check_qmprebase,
         'qmpbackupfs': check_qmpbackupfs}[prog](secs)
    for f in failures:
        print('FAIL:', f)
    if failures:
        return 1
    print('man: 3 pages render clean; options, commands, -o options, exit codes match --help')
    return 0


if __name__ == '__main__':
    sys.exit(main())
