"""The options the programs print in --help, per program and command, and the
options a man page documents, per OPTIONS section: shared by the docs tests
so the pages and the completion are compared with the programs themselves."""
import os
import re
import subprocess

LONG = re.compile(r'(?<![\w-])--[a-z][a-z-]*[a-z]')
SHORT = re.compile(r'(?<![\w/.-])-[a-zA-Z](?![\w-])')
MOUNT = re.compile(r'(?<![\w-])-o\s+([a-z_]+)')

PROGS = {
    'qmpbackup': os.environ.get('QMPBACKUP', 'qmpbackup'),
    'qmprebase': os.environ.get('QMPREBASE', 'qmprebase'),
    'qmpbackupfs': os.environ.get('QMPBACKUPFS', 'qmpbackupfs'),
}
# program -> its commands ('' is the program's own --help)
COMMANDS = {
    'qmpbackup': ['', 'backup', 'info', 'cleanup'],
    'qmprebase': ['', 'rebase', 'merge', 'list', 'sync', 'verify'],
    'qmpbackupfs': [''],
}


def help_text(prog, cmd=''):
    """The --help output of PROG (COMMAND if given); fails unless it exits 0."""
    argv = [PROGS[prog]] + ([cmd] if cmd else []) + ['--help']
    # only the text matters here: qmpbackupfs --help returns without freeing
    # libfuse's parsed arguments, which a sanitizer build reports as a leak
    env = dict(os.environ)
    env['ASAN_OPTIONS'] = ':'.join(filter(None, [env.get('ASAN_OPTIONS'), 'detect_leaks=0']))
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30, env=env)
    if p.returncode != 0:
        raise SystemExit('FAIL: %s exited %d: %s' % (' '.join(argv), p.returncode, p.stdout))
    return p.stdout


def own_help(prog, cmd=''):
    """The help of PROG/CMD without the generic FUSE part (qmpbackupfs)."""
    return help_text(prog, cmd).split('\nFUSE options:')[0]


def options(text):
    """The long and short options named in TEXT (not a quoted `cp -a`)."""
    text = re.sub(r'\b(cp|rsync) -a\b', '', text)
    return set(LONG.findall(text)) | set(SHORT.findall(text))


def mount_options(text):
    """The -o NAME mount options named in TEXT."""
    return set(MOUNT.findall(text))


def roff_text(src):
    """Roff source SRC as plain text, enough to find option names."""
    src = re.sub(r'\\f[BIRP]|\\f\(..|\\&|\\%', '', src)
    src = src.replace('\\-', '-').replace('\\e', '\\').replace('\\ ', ' ')
    return src


def page_sections(path):
    """{heading: plain text} of the .SH and .SS sections of man page PATH."""
    secs, cur = {}, None
    with open(path) as f:
        for line in f:
            m = re.match(r'\.(SH|SS)\s+"?([^"\n]*)"?', line)
            if m:
                cur = m.group(2).strip()
                secs[cur] = ''
            elif cur is not None:
                secs[cur] += roff_text(re.sub(r'^\.[A-Z]{1,2}\s*', '', line))
    return secs


def help_commands(text):
    """The command words listed under "Commands:" in a program's help."""
    m = re.search(r'\nCommands:\n((?:  \S.*\n|    .*\n)+)', text)
    return set(re.findall(r'^  ([a-z]+)\s', m.group(1), re.M)) if m else set()


def help_exit_codes(text):
    """The exit codes listed after "Exit codes:" in a program's help."""
    m = re.search(r'Exit codes:(.*)', text, re.S)
    return set(re.findall(r'(?<![\w-])(\d+) [a-z]', m.group(1))) if m else set()
