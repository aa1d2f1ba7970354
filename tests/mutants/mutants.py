#!/usr/bin/env python3
"""qmpbackupfs mutation testing: put each mutant of mutants.txt into a scratch
copy of the tree, build, run the tests the mutant names, and say whether they
caught it.  Run through tests/mutants/run.sh (see there for the options)."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))


class Mutant:
    """One mutant: NAME, FILE, TESTS, ABOUT, FROM and TO fragments."""

    def __init__(self, name, lineno):
        self.name, self.lineno = name, lineno
        self.file = self.about = ""
        self.tests = []
        self.frm, self.to = [], []


def mutants_parse(path):
    """Parse the mutant list at PATH; exit with the line of any format error."""
    out, cur, part = [], None, None

    def done():
        if cur is None:
            return
        while cur.to and cur.to[-1] == "":
            cur.to.pop()
        if not (cur.file and cur.tests and cur.frm):
            sys.exit("%s:%d: mutant %s needs file:, tests: and a '--- from' fragment"
                     % (path, cur.lineno, cur.name))
        out.append(cur)

    with open(path) as f:
        for n, line in enumerate(f.read().split("\n"), 1):
            if line.startswith("== "):
                done()
                cur, part = Mutant(line[3:].strip(), n), None
            elif cur is None or (part is None and (line.startswith("#") or not line.strip())):
                continue
            elif line == "--- from":
                part = cur.frm
            elif line == "--- to":
                part = cur.to
            elif part is not None:
                part.append(line)
            elif line.startswith("file:"):
                cur.file = line[5:].strip()
            elif line.startswith("tests:"):
                cur.tests = line[6:].split()
            elif line.startswith("about:"):
                cur.about = line[6:].strip()
            else:
                sys.exit("%s:%d: unexpected line: %s" % (path, n, line))
    done()
    names = [m.name for m in out]
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        sys.exit("%s: mutant names used twice: %s" % (path, " ".join(sorted(dup))))
    return out


def mutant_text(m, root):
    """The text of M's file under ROOT with the mutant in, or None if stale."""
    try:
        with open(os.path.join(root, m.file)) as f:
            text = f.read()
    except OSError:
        return None
    frm = "\n".join(m.frm) + "\n"
    if text.count(frm) != 1:
        return None
    return text.replace(frm, "\n".join(m.to) + "\n" if m.to else "")


def tree_copy(src, dst):
    """Copy the tracked and untracked-not-ignored files of SRC to DST."""
    files = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, stdout=subprocess.PIPE).stdout
    for rel in sorted(set(files.decode().split("\0"))):
        if not rel or not os.path.lexists(os.path.join(src, rel)):
            continue
        d = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), d, follow_symlinks=False)


def run(cmd, log, timeout=None):
    """Run CMD appending its output to LOG; its exit code (124 on timeout)."""
    with open(log, "a") as f:
        f.write("$ %s\n" % " ".join(cmd))
        f.flush()
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def test_run(build, test, mult, log):
    """Run meson test TEST in BUILD: 'pass' or 'fail'."""
    rc = run(["meson", "test", "-C", build, "--no-rebuild", "--print-errorlogs",
              "--timeout-multiplier", str(mult), test], log)
    return "pass" if rc == 0 else "fail"


def test_outcome(build):
    """'skip' when the last meson test run skipped everything, else 'ran'."""
    try:
        with open(os.path.join(build, "meson-logs", "testlog.json")) as f:
            res = [l for l in f if l.strip()]
    except OSError:
        return "ran"
    return "skip" if res and all('"result": "SKIP"' in l for l in res) else "ran"


def main():
    ap = argparse.ArgumentParser(prog="tests/mutants/run.sh",
                                 description="Mutation testing of qmpbackupfs.")
    ap.add_argument("--list", action="store_true",
                    help="list the mutants (ok or stale against this tree) and exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch tree and logs")
    ap.add_argument("--no-baseline", action="store_true",
                    help="do not run the tests on the unmutated tree first")
    ap.add_argument("--timeout-multiplier", type=float, default=3, metavar="N")
    ap.add_argument("--mutants", default=os.path.join(HERE, "mutants.txt"), metavar="FILE")
    ap.add_argument("names", nargs="*", metavar="NAME", help="run only these mutants")
    a = ap.parse_args()

    ms = mutants_parse(a.mutants)
    if a.names:
        unknown = set(a.names) - {m.name for m in ms}
        if unknown:
            sys.exit("unknown mutant(s): %s (see --list)" % " ".join(sorted(unknown)))
        ms = [m for m in ms if m.name in a.names]
    if a.list:
        for m in ms:
            state = "ok" if mutant_text(m, SRC) is not None else "STALE"
            print("%-32s %-5s %-20s %s\n%32s       %s" % (m.name, state, m.file,
                                                       " ".join(m.tests), "", m.about))
        return 0

    t0 = time.time()
    scratch = tempfile.mkdtemp(prefix="qb-mutants.")
    src, build, logs = (os.path.join(scratch, x) for x in ("src", "build", "logs"))
    os.makedirs(logs)
    print("scratch tree %s (copy of %s)" % (scratch, SRC), flush=True)
    tree_copy(SRC, src)
    setup_log = os.path.join(logs, "setup.log")
    if run(["meson", "setup", build, src], setup_log) != 0 or \
       run(["ninja", "-C", build, "-j", "2"], setup_log) != 0:
        sys.exit("the unmutated tree does not build: see %s" % setup_log)

    # Every test a mutant names must exist: meson runs nothing (and passes)
    # for an unknown name, which would let any mutant "survive" unseen.
    listed = subprocess.run(["meson", "test", "-C", build, "--no-rebuild", "--list"],
                            capture_output=True, text=True).stdout
    known = {l.rsplit(" / ", 1)[-1].strip() for l in listed.splitlines() if " / " in l}

    baseline_bad = set()
    if not a.no_baseline:
        tests = []
        for m in ms:
            tests += [t for t in m.tests if t not in tests]
        print("baseline: %d tests on the unmutated tree" % len(tests), flush=True)
        for t in tests:
            if test_run(build, t, a.timeout_multiplier, os.path.join(logs, "baseline.log")) != "pass" \
               or test_outcome(build) == "skip":
                baseline_bad.add(t)
                print("  baseline: %s fails or skips unmutated: it cannot catch anything" % t,
                      flush=True)
        print("baseline done in %.0f s" % (time.time() - t0), flush=True)

    results = []
    for m in ms:
        mt0 = time.time()
        log = os.path.join(logs, m.name + ".log")
        path = os.path.join(src, m.file)
        text = mutant_text(m, src)
        missing = [t for t in m.tests if t not in known]
        if text is None or missing:
            why = ("fragment not found exactly once in " + m.file if text is None
                   else "names tests that do not exist: " + " ".join(missing))
            results.append((m, "stale", why, 0))
            print("%-10s %-32s %s" % ("stale", m.name, why), flush=True)
            continue
        with open(path) as f:
            orig = f.read()
        with open(path, "w") as f:
            f.write(text)
        try:
            if run(["ninja", "-C", build, "-j", "2"], log) != 0:
                verdict, why = "broken", "does not build (see %s)" % log
            else:
                verdict, why = "SURVIVED", "by none of: " + " ".join(m.tests)
                for t in m.tests:
                    if t in baseline_bad:
                        continue
                    r = test_run(build, t, a.timeout_multiplier, log)
                    if r == "fail":
                        verdict, why = "caught", "by " + t
                        break
                    if test_outcome(build) == "skip":
                        why += " (%s skipped)" % t
        finally:
            with open(path, "w") as f:
                f.write(orig)
        dt = time.time() - mt0
        results.append((m, verdict, why, dt))
        print("%-10s %-32s %s (%.0f s)" % (verdict, m.name, why, dt), flush=True)

    caught = sum(1 for r in results if r[1] == "caught")
    survived = [r[0].name for r in results if r[1] == "SURVIVED"]
    stale = [r[0].name for r in results if r[1] == "stale"]
    broken = [r[0].name for r in results if r[1] == "broken"]
    valid = caught + len(survived)
    print("score: %d/%d caught (%.0f%%); %d mutants: %d survived%s, %d stale%s, %d broken%s; %.0f s"
          % (caught, valid, 100.0 * caught / valid if valid else 0, len(results),
             len(survived), " (" + " ".join(survived) + ")" if survived else "",
             len(stale), " (" + " ".join(stale) + ")" if stale else "",
             len(broken), " (" + " ".join(broken) + ")" if broken else "",
             time.time() - t0))
    if a.keep or survived or broken:
        print("logs kept in %s" % logs)
        if not a.keep:
            shutil.rmtree(build, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if not survived and not broken and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
