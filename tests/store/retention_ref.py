#!/usr/bin/env python3
"""A second, independent model of qmpbackupfs's retention rules, used only
by the tests to check store/retention.c.

    retention_ref.py POLICY < times

Reads restore point times (UTC microseconds since the epoch, one integer a
line), applies POLICY ("last=3,daily=7,within=30d" form, "" for the empty
policy) and prints one line per point in input order: "keep WHY" or
"remove".  Local time is the zone named by the TZ environment variable
(zoneinfo), buckets from datetime and date.isocalendar().

The rules, as the documentation states them:
  - points newest first; equal times: the later input line is newer;
  - last, hourly, daily, weekly, monthly, yearly in that order; each keeps
    the newest point of each of its N most recent buckets that hold no point
    kept by an earlier option; later points of a bucket it keeps are
    "passed over" and no later option looks at them;
  - within keeps every point at most DURATION older than the newest point
    (y=365d, m=30d, w=7d, d=24h, h, s), in addition;
  - the newest point is always kept; an empty policy keeps all.
"""
import datetime
import os
import re
import sys
import zoneinfo

ORDER = ["last", "hourly", "daily", "weekly", "monthly", "yearly"]
UNIT_SECONDS = {"y": 365 * 86400, "m": 30 * 86400, "w": 7 * 86400,
                "d": 86400, "h": 3600, "s": 1}


def parse_policy(spec):
    """Return a dict key -> count (int) / within (microseconds)."""
    policy = {}
    if spec == "":
        return policy
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or key in policy:
            raise SystemExit("bad policy item %r" % item)
        if key == "within":
            groups = re.findall(r"([0-9]+)([ymwdhs])", value)
            if not groups or "".join(n + u for n, u in groups) != value:
                raise SystemExit("bad duration %r" % value)
            units = [u for _, u in groups]
            if units != sorted(units, key="ymwdhs".index) or len(set(units)) != len(units):
                raise SystemExit("bad duration %r" % value)
            policy[key] = sum(int(n) * UNIT_SECONDS[u] for n, u in groups) * 1000000
        elif key in ORDER:
            if not re.fullmatch(r"[0-9]+", value) or int(value) == 0:
                raise SystemExit("bad count %r" % item)
            policy[key] = int(value)
        else:
            raise SystemExit("unknown key %r" % key)
    return policy


def bucket_of(option, local):
    """The calendar period of OPTION that local datetime LOCAL falls in."""
    if option == "hourly":
        return (local.year, local.month, local.day, local.hour)
    if option == "daily":
        return (local.year, local.month, local.day)
    if option == "weekly":
        iso = local.date().isocalendar()
        return (iso[0], iso[1])
    if option == "monthly":
        return (local.year, local.month)
    return (local.year,)


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: retention_ref.py POLICY < times")
    policy = parse_policy(sys.argv[1])
    times = [int(line) for line in sys.stdin if line.strip()]
    tzname = os.environ.get("TZ", "UTC").lstrip(":") or "UTC"
    zone = zoneinfo.ZoneInfo(tzname)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

    cache = {}

    def local(t_us):
        # Whole seconds, rounded down (also before 1970).
        if t_us not in cache:
            cache[t_us] = (epoch + datetime.timedelta(seconds=t_us // 1000000)).astimezone(zone)
        return cache[t_us]

    # Newest first; among equal times the later input line first.
    newest_first = sorted(range(len(times)), key=lambda i: (times[i], i), reverse=True)
    reason = {}          # index -> why it is kept
    passed_over = set()  # indexes an option decided to drop

    if not policy:
        for i in range(len(times)):
            reason[i] = "all"
    else:
        for option in ORDER:
            count = policy.get(option, 0)
            if count == 0:
                continue
            if option == "last":
                undecided = [i for i in newest_first if i not in reason and i not in passed_over]
                for i in undecided[:count]:
                    reason[i] = "last"
                continue
            covered = {bucket_of(option, local(times[i])) for i in reason}
            taken = set()
            for i in newest_first:
                if i in reason or i in passed_over:
                    continue
                b = bucket_of(option, local(times[i]))
                if b in covered:
                    continue
                if b in taken:
                    passed_over.add(i)
                    continue
                if len(taken) == count:
                    break
                taken.add(b)
                reason[i] = option
        if "within" in policy and times:
            newest = max(times)
            for i in range(len(times)):
                if i not in reason and newest - times[i] <= policy["within"]:
                    reason[i] = "within"
        if times and newest_first[0] not in reason:
            reason[newest_first[0]] = "newest"

    out = []
    for i in range(len(times)):
        out.append("keep %s" % reason[i] if i in reason else "remove")
    sys.stdout.write("".join(line + "\n" for line in out))


if __name__ == "__main__":
    main()
