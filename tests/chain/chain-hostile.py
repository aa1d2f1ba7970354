#!/usr/bin/env python3
"""Hostile qcow2 layers (made by craft_qcow2.py): the chain reader calls each
one damaged with a message naming the file and the fault, never aborts, and
never needs memory for what the tables claim: the peak RSS of chaincat on a
hostile layer may exceed that on a valid one by less than 64 MiB (the
shared-L2 image once made chain_open ask for gigabytes).  When memory runs
out while a valid layer is opened (RLIMIT_AS), chaincat fails with
out-of-memory instead of aborting (not checked in sanitizer builds).

    chain-hostile.py CHAINCAT
"""
import os
import resource
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CRAFT = os.path.join(HERE, "craft_qcow2.py")
LIMIT_KIB = 64 * 1024

# kind -> (cluster bits to try, what chaincat --check must say)
DAMAGED_AT_OPEN = {
    "shared-l2": ((16, 9, 21), ("shared or overlapping L2 tables", "too big for the chain reader")),
    "overlap-l1": ((16, 9), "overlaps the header, the L1 table or the refcount table"),
    "overlap-refcount": ((16,), "overlaps the header, the L1 table or the refcount table"),
    "overlap-data": ((16, 12), "overlaps a data cluster"),
    "huge-l1-size": ((16,), "invalid L1 table size"),
    "huge-size": ((16,), "invalid L1 table size"),
    "l1-past-eof": ((16,), "L1 table at offset"),
    "l2-past-eof": ((16, 9), "an L2 table outside the file"),
    "refcount-past-eof": ((16,), "refcount table at offset"),
    "cluster-bits": ((16,), "cluster bits 30"),
}
DAMAGED_CLUSTER = ("data-past-eof", "data-shared")

failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAIL: " + msg, file=sys.stderr)


def run(argv):
    """Run chaincat ARGV; (wait status, output, its peak RSS in KiB, as it
    reports it from VmHWM: a fork's rusage would count this interpreter)."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=dict(os.environ, CHAINCAT_PEAK_RSS="1"))
    out = p.stdout.decode(errors="replace")
    rss = 0
    lines = []
    for line in out.splitlines(keepends=True):
        if line.startswith("peak_rss_kib "):
            rss = int(line.split()[1])
        else:
            lines.append(line)
    status = (-p.returncode) if p.returncode < 0 else (p.returncode << 8)
    return status, "".join(lines), rss


def main():
    chaincat = sys.argv[1]
    tmp = tempfile.mkdtemp()
    try:
        def craft(kind, cb):
            path = os.path.join(tmp, "%s-%d.qcow2" % (kind, cb))
            subprocess.run([sys.executable, CRAFT, kind, path, str(cb)], check=True)
            return path

        valid = craft("valid", 16)
        st, out, base_rss = run([chaincat, "--check", valid])
        if st != 0 or out.strip() != "ok" or base_rss == 0:
            fail("valid crafted image: %s" % out)
        if shutil.which("qemu-img"):
            raw = os.path.join(tmp, "valid.raw")
            subprocess.run(["qemu-img", "check", "-q", valid], check=True)
            subprocess.run(["qemu-img", "convert", "-O", "raw", valid, raw], check=True)
            with open(raw, "rb") as f:
                want = f.read()
            got = subprocess.run([chaincat, valid], capture_output=True, check=True).stdout
            if got != want:
                fail("valid crafted image: chaincat bytes differ from qemu-img convert")
        print("ok: valid crafted image reads as qemu-img reads it (peak RSS %d KiB)" % base_rss)

        for cb in (16, 9):
            zs = craft("zero-stripes", cb)
            st, out, rss = run([chaincat, "--check", zs])
            if st != 0:
                fail("zero-stripes (cluster bits %d): %s" % (cb, out))
            if rss - base_rss >= LIMIT_KIB:
                fail("zero-stripes (cluster bits %d): peak RSS %d KiB" % (cb, rss))
            print("ok: zero stripes, cluster bits %d: opens, peak RSS %d KiB" % (cb, rss))

        for kind, (cbs, word) in DAMAGED_AT_OPEN.items():
            for cb in cbs:
                path = craft(kind, cb)
                for argv, what in (([chaincat, "--check", path], "alone"),
                                   ([chaincat, "--check", valid, path], "over a valid base")):
                    st, out, rss = run(argv)
                    name = "%s (cluster bits %d, %s)" % (kind, cb, what)
                    if os.WIFSIGNALED(st):
                        fail("%s: chaincat killed by signal %d: %s" % (name, os.WTERMSIG(st), out))
                        continue
                    if os.WEXITSTATUS(st) != 1:
                        fail("%s: exit %d, want 1: %s" % (name, os.WEXITSTATUS(st), out))
                    words = word if isinstance(word, tuple) else (word,)
                    if "(damaged)" not in out or not any(x in out for x in words) \
                       or path not in out:
                        fail("%s: message lacks the file, '%s' or the damaged code: %s"
                             % (name, word, out))
                    if rss == 0 or rss - base_rss >= LIMIT_KIB:
                        fail("%s: peak RSS %d KiB, %d KiB over a valid image"
                             % (name, rss, rss - base_rss))
                print("ok: %s: damaged, peak RSS %d KiB: %s" % (kind, rss, out.strip()[:160]))

        # Out of memory: a failure with a message, never an abort.
        sparse = craft("sparse-data", 9)
        st, out, rss = run([chaincat, "--check", sparse])
        if st != 0:
            fail("sparse-data: %s" % out)
        print("ok: sparse data in 512-byte clusters opens, peak RSS %d KiB" % rss)
        ldd = subprocess.run(["ldd", chaincat], capture_output=True, text=True).stdout
        if "libasan" in ldd or "libubsan" in ldd:
            print("ok: (sanitizer build: the memory limit part is skipped)")
        else:
            limit = 48 << 20

            def lim():
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

            p = subprocess.run([chaincat, "--check", valid], preexec_fn=lim,
                               capture_output=True, text=True)
            if p.returncode != 0:
                fail("valid image under a %d MiB address space limit: %s"
                     % (limit >> 20, p.stderr))
            p = subprocess.run([chaincat, "--check", sparse], preexec_fn=lim,
                               capture_output=True, text=True)
            if p.returncode != 1 or "(out-of-memory)" not in p.stderr \
               or "nothing is damaged" not in p.stderr:
                fail("sparse-data under a %d MiB address space limit: exit %d: %s"
                     % (limit >> 20, p.returncode, p.stderr))
            print("ok: out of memory under RLIMIT_AS: %s" % p.stderr.strip())

        for kind in DAMAGED_CLUSTER:
            path = craft(kind, 16)
            st, out, rss = run([chaincat, "--check", path])
            if os.WIFSIGNALED(st) or os.WEXITSTATUS(st) != 1 or "(damaged)" not in out \
               or path not in out or "guest offset 65536" not in out:
                fail("%s: want damage at guest offset 65536: %s" % (kind, out))
            # the good cluster still reads, the bad one fails
            st, out, _ = run([chaincat, "--range", "0", "65536", path])
            if st != 0 or not out.startswith("\x11" * 16):
                fail("%s: cluster 0 does not read: %s" % (kind, out[:200]))
            st, out, _ = run([chaincat, "--range", "65536", "512", path])
            if os.WIFSIGNALED(st) or os.WEXITSTATUS(st) != 1 or "(damaged)" not in out:
                fail("%s: cluster 1 read did not fail as damaged: %s" % (kind, out[:200]))
            print("ok: %s: cluster 1 damaged, cluster 0 reads" % kind)
    finally:
        shutil.rmtree(tmp)
    if failures:
        print("%d failure(s)" % failures, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
