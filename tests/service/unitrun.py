#!/usr/bin/env python3
"""Run the commands of a systemd service unit the way systemd would, for tests
on machines where systemd is not PID 1.

  unitrun.py [--replace OLD=NEW]... [--instance I] --cgroup DIR UNIT start|stop|exec-lines

The unit text gets every OLD replaced by NEW first (build paths, /etc paths).
start: Environment=, EnvironmentFile= ('-' optional), %i/%I/%% specifiers,
$VAR (split at whitespace) and ${VAR} (one word) and $$ in Exec lines;
ExecStartPre= lines in order (a failing one without '-' fails the start),
then ExecStart=.  Type=forking: the start succeeds when that process exits 0
(what systemd takes as "started"); Type=oneshot: its exit code is the
result.  Every process runs in the cgroup v2 directory DIR (created), like a
unit's control group.
stop: KillMode=control-group or mixed or process and KillSignal= as systemd
does them: the signal to every process of the group (control-group) or the
main one (the one named like ExecStart's program; a forked helper that
renamed itself, like the thaw guard, is not), then wait up to
TimeoutStopSec= for the group to be empty; processes still there get SIGKILL
and the stop exits 3.  Exit 0 when the group emptied by itself.
exec-lines: print the expanded ExecStartPre/ExecStart lines (one JSON list
each) without running them.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time


def die(msg, code=2):
    print("unitrun: " + msg, file=sys.stderr)
    sys.exit(code)


def parse_unit(text):
    """Sections as {section: [(key, value), ...]} in file order."""
    secs, cur = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = line[1:-1]
            secs.setdefault(cur, [])
            continue
        if "=" not in line or cur is None:
            die("cannot parse unit line: " + raw)
        k, v = line.split("=", 1)
        secs[cur].append((k.strip(), v.strip()))
    return secs


def specifiers(s, inst):
    def rep(m):
        c = m.group(1)
        if c == "%":
            return "%"
        if c in "iI":
            return inst
        die("specifier %%%s not supported here" % c)
    return re.sub(r"%(.)", rep, s)


def env_file(path, env):
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                die("%s: not KEY=VALUE: %s" % (path, raw.rstrip()))
            k, v = line.split("=", 1)
            words = shlex.split(v, posix=True) if v.strip() else [""]
            env[k.strip()] = " ".join(words)


VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def exec_words(line, env):
    """The argv of an Exec line, systemd's way; returns (argv, ignore_failure)."""
    ignore = False
    while line and line[0] in "-@+!:":
        ignore |= line[0] == "-"
        line = line[1:]
    argv = []
    for w in shlex.split(line, posix=True):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
        if m:                               # $VAR alone: split at whitespace
            argv.extend(env.get(m.group(1), "").split())
            continue

        def rep(m):
            if m.group(0) == "$$":
                return "$"
            return env.get(m.group(1) or m.group(2), "")
        argv.append(VAR.sub(rep, w))
    return argv, ignore


def cg_pids(cg):
    try:
        with open(os.path.join(cg, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def main_program(pid):
    """The command name of process PID (its comm), or None when it is gone."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def seconds(v):
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|)?", v)
    if not m:
        die("cannot parse time " + v)
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def main():
    args = sys.argv[1:]
    repl, inst, cg = [], "", None
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt == "--replace":
            old, new = args.pop(0).split("=", 1)
            repl.append((old, new))
        elif opt == "--instance":
            inst = args.pop(0)
        elif opt == "--cgroup":
            cg = args.pop(0)
        else:
            die("unknown option " + opt)
    if len(args) != 2 or cg is None:
        die(__doc__.strip().splitlines()[2].strip())
    unit, action = args
    text = open(unit).read()
    for old, new in repl:
        text = text.replace(old, new)
    svc = dict()
    lists = {"Environment": [], "EnvironmentFile": [], "ExecStartPre": [], "ExecStart": []}
    for k, v in parse_unit(text).get("Service", []):
        v = specifiers(v, inst)
        if k in lists:
            lists[k].append(v)
        else:
            svc[k] = v

    if action == "stop":
        env = dict(os.environ)
        main_exe = os.path.basename(exec_words(lists["ExecStart"][0], env)[0][0])[:15]
        mode = svc.get("KillMode", "control-group")
        sig = getattr(signal, svc.get("KillSignal", "SIGTERM"))
        timeout = seconds(svc.get("TimeoutStopSec", "90"))
        pids = cg_pids(cg)
        if not pids:
            return 0
        if mode == "control-group":
            targets = pids
        else:                                # the main process: runs ExecStart's program
            targets = [p for p in pids if main_program(p) == main_exe]
        for p in targets:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while cg_pids(cg) and time.monotonic() < deadline:
            if mode == "mixed" and not any(p in cg_pids(cg) for p in targets):
                break                         # mixed: the rest gets SIGKILL once the main one is gone
            time.sleep(0.05)
        left = cg_pids(cg)
        if left and mode != "process":
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            print("unitrun: processes %s needed SIGKILL" % left, file=sys.stderr)
            return 3
        return 0

    env = dict(os.environ)
    for e in lists["Environment"]:
        for w in shlex.split(e, posix=True):
            k, v = w.split("=", 1)
            env[k] = v
    for f in lists["EnvironmentFile"]:
        opt = f.startswith("-")
        f = f.lstrip("-")
        if not os.path.exists(f):
            if opt:
                continue
            die("EnvironmentFile %s missing" % f, 1)
        env_file(f, env)
    lines = [("ExecStartPre", l) for l in lists["ExecStartPre"]] + \
            [("ExecStart", l) for l in lists["ExecStart"]]
    if action == "exec-lines":
        for k, l in lines:
            print(k, json.dumps(exec_words(l, env)[0]))
        return 0
    if action != "start":
        die("unknown action " + action)

    os.makedirs(cg, exist_ok=True)

    def enter_cgroup():
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    typ = svc.get("Type", "simple")
    for k, l in lines:
        argv, ignore = exec_words(l, env)
        r = subprocess.run(argv, env=env, preexec_fn=enter_cgroup, stdin=subprocess.DEVNULL,
                           cwd="/").returncode
        if k == "ExecStartPre" and r != 0 and not ignore:
            print("unitrun: %s %s exited %d" % (k, argv, r), file=sys.stderr)
            return 1
        if k == "ExecStart":
            if typ not in ("forking", "oneshot"):
                die("Type=%s not supported here" % typ)
            return r
    return 0


if __name__ == "__main__":
    sys.exit(main())
